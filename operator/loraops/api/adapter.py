"""`LoraAdapter`: a released adapter — verified bytes, release metadata, provenance, evaluation, placements."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue, StringConstraints

from .common import (
    ApiModel,
    ArtifactUri,
    Conditions,
    ConfigMapKeyReference,
    LocalObjectReference,
    ModelName,
    SecretReference,
    ServingSpec,
    Sha256,
    TenantId,
)
from .signing import SignatureSpec, SignatureStatus
from .training import Method, TargetModule

SOURCE_RULES: list[JsonValue] = [
    {
        "rule": "has(self.uri) != has(self.trainingRef)",
        "message": "exactly one of source.uri or source.trainingRef must be set",
        "fieldPath": ".uri",
    },
    {
        "rule": "!has(self.uri) || has(self.sha256)",
        "message": "source.sha256 is required with source.uri: pin the digest (`loraops digest DIR` prints it)",
        "fieldPath": ".sha256",
    },
    {
        "rule": "!has(self.credentialsSecretRef) || has(self.uri)",
        "message": "source.credentialsSecretRef is only used with source.uri",
        "fieldPath": ".credentialsSecretRef",
    },
    {
        "rule": "!has(oldSelf.sha256) || (has(self.sha256) && self.sha256 == oldSelf.sha256)",
        "message": "source.sha256 is immutable once set: release a new LoraAdapter instead",
        "fieldPath": ".sha256",
    },
    {
        "rule": "!has(oldSelf.trainingRef) || (has(self.trainingRef) && self.trainingRef == oldSelf.trainingRef)",
        "message": "source.trainingRef is immutable once set: release a new LoraAdapter instead",
        "fieldPath": ".trainingRef",
    },
]
GOLDEN_RULES: list[JsonValue] = [
    {
        "rule": "has(self.configMapRef) != has(self.uri)",
        "message": "exactly one of evaluation.golden.configMapRef or evaluation.golden.uri must be set",
    },
]

MergeState = Literal["unmerged", "merged"]
EvalMetric = Literal["exact_match", "contains", "token_f1", "json_valid", "regex_match"]
DEFAULT_METRICS: tuple[EvalMetric, ...] = ("exact_match",)


class AdapterSource(ApiModel):
    """Where the adapter comes from: exactly one of `uri` (with its `sha256`) or `trainingRef`."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SOURCE_RULES})

    uri: ArtifactUri | None = None
    """The adapter folder: `s3://bucket/prefix`, `pvc://claim/path` or `file:///path`."""
    sha256: Sha256 | None = None
    """The adapter's digest (sha256 over the sorted (file, sha256) list; `loraops digest DIR` prints it).
    Required with `uri`; immutable once set: release a new LoraAdapter instead."""
    credentials_secret_ref: SecretReference | None = None
    """Secret with read credentials for s3:// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`)."""
    training_ref: LocalObjectReference | None = None
    """A LoraTraining in this namespace; uri and digest are taken from its status once it succeeds."""
    signature: SignatureSpec | None = None
    """Verify the adapter's OpenSSF model signature (`model.sig` in the folder) before every load. Required
    in namespaces where the operator's `requireSignedAdapters` policy applies."""
    convert_pickle: bool = False
    """Opt in to converting pickle weights (`adapter_model.bin`/`.pt`) to safetensors before loading; the agents
    do it in an isolated child process with torch's `weights_only` unpickler, after the digest check. Without it
    any pickle file is refused (`UnsafeFormat`): such files can run code when loaded."""


class AdapterLora(ApiModel):
    """The LoRA shape the adapter claims; checked against its files and against the serving limits."""

    rank: Annotated[int, Field(ge=1, le=1024)]
    """Rank `r`."""
    alpha: Annotated[float, Field(gt=0, le=8192)] | None = None
    """Scaling alpha."""
    target_modules: Annotated[list[TargetModule], Field(min_length=1, max_length=64)] | None = None
    """Adapted modules."""
    method: Method | None = None
    """How it was trained."""


class ReleaseSpec(ApiModel):
    """Release metadata: what this version is."""

    version: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")]
    """Release version, e.g. `2.0.0`."""
    dataset_version: Annotated[str, StringConstraints(max_length=128)] | None = None
    """Version of the data it was trained on."""
    prompt_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    """Version of the prompt it expects."""
    merge_state: MergeState = "unmerged"
    """`unmerged` (loaded dynamically by vLLM) or `merged` (already merged into a base checkpoint)."""


class ProvenanceSpec(ApiModel):
    """Who is accountable for the adapter and what it may be used for."""

    owner: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Team or person accountable for the adapter."""
    license: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    """License of the adapter weights (SPDX id where there is one)."""
    intended_use: Annotated[str, StringConstraints(max_length=4096)] | None = None
    limitations: Annotated[str, StringConstraints(max_length=4096)] | None = None
    data_sources: list[Annotated[str, StringConstraints(max_length=1024)]] | None = None


class GoldenSet(ApiModel):
    """The golden set: JSONL rows with `messages` or `prompt`, `expected` and an optional `slice`.
    Exactly one of `configMapRef` or `uri`."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": GOLDEN_RULES})

    config_map_ref: ConfigMapKeyReference | None = None
    uri: ArtifactUri | None = None
    credentials_secret_ref: SecretReference | None = None


class EvaluationSpec(ApiModel):
    """The gate before traffic: adapter vs base on a golden set."""

    golden: GoldenSet
    metrics: Annotated[list[EvalMetric], Field(min_length=1)] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    """Metrics computed; the first one gates."""
    min_delta: Annotated[float, Field(ge=-1, le=1)] = 0.0
    """The lower bound of the 95% CI of (adapter − base) on the gating metric must be at least this."""
    max_slice_regression: Annotated[float, Field(ge=0, le=1)] = 0.02
    """No slice may lose more than this against the base."""
    max_tokens: Annotated[int, Field(ge=1, le=8192)] = 256
    """Completion length per golden row."""


class ProbeSettings(ApiModel):
    """The effect probe each agent runs after every load: the same prompts to the base model and to the adapter,
    greedy with logprobs; identical answers mean the adapter changes nothing (`Effective=False NoEffect`)."""

    prompts: (
        Annotated[
            list[Annotated[str, StringConstraints(min_length=1, max_length=2000)]], Field(min_length=1, max_length=8)
        ]
        | None
    ) = None
    """Completion prompts; default: a few fixed generic prompts. Give prompts of the adapter's own domain when
    it is meant to change nothing on generic text."""
    max_tokens: Annotated[int, Field(ge=1, le=64)] = 8
    """Tokens generated per prompt."""
    enabled: bool = True
    """False skips the probe: `Effective` is then Unknown (shown, does not block Ready)."""


class LoraAdapterSpec(ApiModel):
    """A release of an adapter for one base model."""

    base_model: Annotated[ModelName, StringConstraints(min_length=1)]
    """The base model it was trained on, as vLLM serves it."""
    source: AdapterSource
    lora: AdapterLora | None = None
    release: ReleaseSpec
    provenance: ProvenanceSpec
    serving: ServingSpec
    tenants: list[TenantId] | None = None
    """Tenants allowed to be routed to it (default: every tenant)."""
    evaluation: EvaluationSpec | None = None
    """When set, the adapter is Ready only after it passes this evaluation."""
    probe: ProbeSettings | None = None
    """The effect probe after each load (default: on, with the agent's generic prompts). Applies to the next
    load: a loaded release is not probed again when this changes."""


AdapterPhase = Literal["Pending", "Verifying", "Loading", "Evaluating", "Ready", "Failed", "Deleting"]
PlacementState = Literal["Loading", "Loaded", "Failed", "Unloading"]


class ResolvedArtifact(ApiModel):
    """The artifact as verified."""

    uri: str
    digest: Sha256
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    files: Annotated[int, Field(ge=0)] | None = None


class SliceScore(ApiModel):
    name: str
    base_score: float
    adapter_score: float
    delta: float
    samples: int


class EvaluationResult(ApiModel):
    """Result of the last evaluation (of `digest` on the golden set `goldenDigest`)."""

    metric: str
    base_score: float
    adapter_score: float
    delta: float
    ci_low: float
    ci_high: float
    samples: int
    slices: list[SliceScore] | None = None
    passed: bool
    digest: Sha256 | None = None
    golden_digest: Sha256 | None = None
    completed_at: datetime | None = None
    job_name: str | None = None
    """The evaluation Job; its name carries a key of the inputs, so the same inputs are never evaluated twice."""


class Placement(ApiModel):
    """The adapter on one vLLM pod, as its agent reports it."""

    pod: str
    state: PlacementState
    digest: Sha256 | None = None
    served_name: str | None = None
    loaded_at: datetime | None = None
    message: str | None = None
    effective: bool | None = None
    """The effect probe's verdict on this pod: false answers exactly like the base model (NoEffect); absent when
    not probed, or when the probe was inconclusive (the base model's own answers moved)."""
    probe_latency_seconds: float | None = None
    """The adapter's first (cold) request after the load: the probe that pre-warmed it."""


class ReleaseSummary(ApiModel):
    """The release as served: metadata and accountability in one place for `kubectl describe`."""

    version: str
    digest: Sha256 | None = None
    dataset_version: str | None = None
    prompt_version: str | None = None
    merge_state: MergeState | None = None
    owner: str | None = None
    license: str | None = None
    trained_by: str | None = None
    """The LoraTraining that produced it (trainingRef), if any."""


class LoraAdapterStatus(ApiModel):
    """What the operator observed."""

    phase: AdapterPhase | None = None
    artifact: ResolvedArtifact | None = None
    served_name: str | None = None
    """The name vLLM serves this release under: `<adapter>-<first 12 hex of the digest>`, one name per digest."""
    evaluation: EvaluationResult | None = None
    placements: list[Placement] | None = None
    ready_replicas: str | None = None
    """Loaded replicas over wanted replicas, e.g. `3/3`."""
    release: ReleaseSummary | None = None
    signature: SignatureStatus | None = None
    """Who signed the release and the signed subject digest, as the agents verified them (with `source.signature`)."""
    message: str | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
