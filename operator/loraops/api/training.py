"""`LoraTraining`: a GPU training Job that produces a LoRA adapter."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from .common import (
    MODEL_URI,
    ApiModel,
    ArtifactUri,
    Conditions,
    LabelName,
    LocalObjectReference,
    ModelName,
    ObjectName,
    SecretReference,
    ServingSpec,
    Sha256,
    TenantId,
)
from .signing import SignatureSpec, SigningSpec

Method = Literal["lora", "qlora", "dora", "rslora"]
DatasetFormat = Literal["chat", "completion", "text"]
TargetModule = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=128)]


class BaseModelSpec(ApiModel):
    """The base model to train on."""

    name: Annotated[ModelName, StringConstraints(min_length=1)]
    """The base model's name, as vLLM serves it and as adapters record it, e.g.
    `meta-llama/Llama-3.1-8B-Instruct`."""
    uri: Annotated[str, StringConstraints(pattern=MODEL_URI, max_length=1024)] | None = None
    """Where the weights are read from (`pvc://claim/path`, `s3://…`, `file:///…`, or `hf://org/name`
    where the cluster reaches the hub). Default: the name is resolved by the trainer image's cache."""
    revision: Annotated[str, StringConstraints(max_length=128)] | None = None
    """A revision or weights digest recorded in the adapter's manifest."""


class DatasetSpec(ApiModel):
    """The training data: JSONL in one of three formats."""

    uri: ArtifactUri
    """Where the JSONL file is (`s3://`, `pvc://` or `file:///`)."""
    format: DatasetFormat = "chat"
    """`chat` (`messages` with roles), `completion` (`prompt`, `completion`) or `text` (`text`)."""
    version: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    """The dataset's version, recorded in the adapter's release metadata."""
    sha256: Sha256 | None = None
    """The file's sha256; the run stops if the data read does not match."""
    eval_split: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Fraction of rows held out for evaluation loss."""
    credentials_secret_ref: SecretReference | None = None
    """Secret with `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and optional `AWS_ENDPOINT_URL`) for s3://."""


class LoraShape(ApiModel):
    """The shape of the low-rank update."""

    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank `r` of the update matrices."""
    alpha: Annotated[float, Field(gt=0, le=8192)] = 32
    """Scaling numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the LoRA input during training."""
    target_modules: Annotated[list[TargetModule], Field(min_length=1, max_length=64)] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Module names to adapt, or `["all-linear"]`."""


class Hyperparameters(ApiModel):
    """Optimisation settings."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    """Passes over the training data (ignored when `maxSteps` is set)."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimizer steps."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    """Peak learning rate (of the A matrices when `loraPlusRatio` is set)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    """Fraction of the steps spent warming up."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    """Sequences per device per micro-batch."""
    gradient_accumulation: Annotated[int, Field(ge=1, le=1024)] = 1
    """Micro-batches per optimizer step."""
    max_seq_length: Annotated[int, Field(ge=16, le=1048576)] = 2048
    """Sequences are truncated to this many tokens."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Seed for data order and initialisation."""
    packing: bool = False
    """Pack several short examples into one sequence."""


class ResourcesSpec(ApiModel):
    """Where and on how much hardware the Job runs."""

    nodes: Annotated[int, Field(ge=1, le=256)] = 1
    """Number of nodes; more than one runs an Indexed Job with torchrun rendezvous."""
    gpus_per_node: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs per node (`nvidia.com/gpu`); more than one runs torchrun with that many processes."""
    cpu: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?m?$")] | None = None
    """CPU request and limit, e.g. `8` or `500m`."""
    memory: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")] | None = None
    """Memory request and limit, e.g. `64Gi`."""
    shared_memory: Annotated[str, StringConstraints(pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")] = "16Gi"
    """Size of the memory-backed `/dev/shm`."""
    node_selector: dict[str, str] | None = None
    """Node labels the pods must match."""
    tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    """Pod tolerations, passed through as written (core/v1 `Toleration`)."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Pod affinity, passed through as written (core/v1 `Affinity`)."""
    priority_class_name: ObjectName | None = None
    """PriorityClass of the pods."""


class OutputSpec(ApiModel):
    """Where the adapter is written."""

    uri: ArtifactUri
    """Output location; the adapter and checkpoints go under `<uri>/<training name>/`."""
    credentials_secret_ref: SecretReference | None = None
    """Secret with write credentials for s3:// (same keys as the dataset's)."""


class RunPolicy(ApiModel):
    """How the Job is retried and cleaned up."""

    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 2
    """Retries of a failed attempt (each resumes from the last checkpoint)."""
    active_deadline_seconds: Annotated[int, Field(ge=60)] | None = None
    """Wall-clock limit for the whole training."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = 86400
    """How long the finished Job stays for inspection."""


class AdapterTemplate(ApiModel):
    """The LoraAdapter to create when the training succeeds."""

    name: LabelName | None = None
    """Name of the LoraAdapter (default: the training's name)."""
    serving: ServingSpec
    """The vLLM Deployment that serves it."""
    tenants: list[TenantId] | None = None
    """Tenants allowed to use it (default: all)."""
    release_version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    """Release version recorded on the adapter (default: `0.0.0-<training name>`)."""
    prompt_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    """Version of the prompt the adapter was trained for."""
    owner: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    """Owner recorded in the adapter's provenance."""
    license: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    """License recorded in the adapter's provenance."""
    signature: SignatureSpec | None = None
    """How the adapter's agents verify the signature `spec.signing` writes (its `source.signature`)."""


class LoraTrainingSpec(ApiModel):
    """What to train. Immutable once created, except `suspend`: to train again, create a new LoraTraining."""

    base_model: BaseModelSpec
    dataset: DatasetSpec
    method: Method = "lora"
    """`lora`, `qlora` (4-bit NF4 base), `dora` (weight-decomposed) or `rslora` (rank-stabilised scaling)."""
    lora_plus_ratio: Annotated[float, Field(ge=1, le=1024)] | None = None
    """LoRA+: the B matrices learn this many times faster than the A matrices."""
    lora: LoraShape = Field(default_factory=LoraShape)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    checkpoint_interval_steps: Annotated[int, Field(ge=1)] = 100
    """Checkpoint to the output location every N steps, so a retried Job resumes."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Trainer image (default: the operator's configured trainer image)."""
    image_pull_secrets: list[LocalObjectReference] | None = None
    """Secrets for pulling the trainer image."""
    output: OutputSpec
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    adapter_template: AdapterTemplate | None = None
    """When set, a LoraAdapter is created from the output on success."""
    signing: SigningSpec | None = None
    """Sign the finished adapter (OpenSSF model signing): the trainer writes `model.sig` next to its files and
    records the signed subject digest in the manifest."""
    suspend: bool = False
    """Suspend the Job (pods are removed; training resumes from the last checkpoint when unset)."""


TrainingPhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]


class TrainingProgress(ApiModel):
    """How far the training is, from the trainer's progress lines."""

    step: Annotated[int, Field(ge=0)] = 0
    total_steps: Annotated[int, Field(ge=0)] = 0
    percent: Annotated[int, Field(ge=0, le=100)] = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    updated_at: datetime | None = None


class TrainingOutput(ApiModel):
    """The finished adapter."""

    uri: str
    """Where the adapter folder is."""
    sha256: Sha256
    """The adapter's digest (manifest rule): what a LoraAdapter's `source.sha256` pins."""
    signature_digest: Sha256 | None = None
    """The subject digest of the adapter's signature (`spec.signing`), from its manifest."""
    metrics: dict[str, float] | None = None
    """Final metrics (first and last train loss, eval loss, …)."""


class LoraTrainingStatus(ApiModel):
    """What the operator observed. Recomputed from the Job and its pods on every reconcile."""

    phase: TrainingPhase | None = None
    job_name: str | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    progress: TrainingProgress | None = None
    output: TrainingOutput | None = None
    adapter_ref: LocalObjectReference | None = None
    """The LoraAdapter created from `adapterTemplate`."""
    message: str | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
