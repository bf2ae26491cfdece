"""The trainer's configuration: one YAML or JSON file, mirroring the LoraTraining spec.

Field names are snake_case in Python and camelCase on the wire, like the CRD, so the operator can render a
LoraTraining's spec into a ConfigMap with little more than a copy. Fields that only the operator uses
(resources, image, runPolicy, adapterTemplate, credentials references …) are accepted and ignored, so a spec
dumped whole still loads; any other unknown field is an error, because a typo must not silently fall back to
a default on an expensive GPU run.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import ConfigError

Method = Literal["lora", "qlora", "dora", "rslora"]
DatasetFormat = Literal["chat", "completion", "text"]
Scheduler = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
ALL_LINEAR = "all-linear"

SHA256_HEX = r"^[a-f0-9]{64}$"

T = TypeVar("T", bound=BaseModel)


class Model(BaseModel):
    """Base of every config value: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


class BaseModelConfig(Model):
    """The model the adapter is trained on."""

    name: Annotated[str, Field(min_length=1)]
    """Name as vLLM serves it (recorded in the manifest). Used as a hub id only when neither `uri` nor
    `path` is set, which needs a cluster with internet access."""
    uri: str | None = None
    """`pvc://claim/path`, `file:///path`, `s3://bucket/prefix` or `hf://org/name`."""
    path: str | None = None
    """A local (or mounted) directory; takes precedence over `uri`."""
    revision: str | None = None
    """Hub revision to load (for `hf://` and hub ids); recorded in the manifest either way."""
    sha256: Annotated[str, Field(pattern=SHA256_HEX)] | None = None
    """Declared digest of the weights directory (manifest digest rule). When set, the run verifies it
    before training and stops on a mismatch."""


class DatasetConfig(Model):
    """The training data: one JSONL file."""

    uri: Annotated[str, Field(min_length=1)]
    """`s3://bucket/key`, `pvc://claim/path`, `file:///path` or a local path."""
    format: DatasetFormat = "chat"
    """`chat` (`messages` with roles), `completion` (`prompt`, `completion`) or `text` (`text`)."""
    version: Annotated[str, Field(min_length=1)]
    """The dataset's version, recorded in the manifest."""
    sha256: Annotated[str, Field(pattern=SHA256_HEX)] | None = None
    """Declared sha256 of the file's bytes; a mismatch stops the run before training."""
    eval_split: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Fraction of rows held out (seeded) to compute the eval loss."""
    eval_uri: str | None = None
    """A separate JSONL file (same format) for the eval loss; excludes `evalSplit`."""
    eval_sha256: Annotated[str, Field(pattern=SHA256_HEX)] | None = None
    """Declared sha256 of the eval file."""
    credentials_secret_ref: dict[str, Any] | None = None
    """Operator-only (the Secret is mounted as environment variables); ignored here."""

    @model_validator(mode="after")
    def _one_eval_source(self) -> DatasetConfig:
        if self.eval_split is not None and self.eval_uri is not None:
            raise ValueError("set either evalSplit or evalUri, not both")
        if self.eval_sha256 is not None and self.eval_uri is None:
            raise ValueError("evalSha256 needs evalUri")
        return self


class LoraShape(Model):
    """The shape of the low-rank update."""

    rank: Annotated[int, Field(ge=1, le=4096)] = 16
    """Rank `r` of the A and B matrices."""
    alpha: Annotated[float, Field(gt=0)] = 32
    """Scale numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the LoRA branch's input during training."""
    target_modules: list[Annotated[str, Field(min_length=1)]] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Module names to adapt (the last component of the module path), or `all-linear` (every linear
    layer but the output head). `["all-linear"]` is accepted as the CRD writes it."""

    @field_validator("target_modules")
    @classmethod
    def _normalise_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("targetModules must name at least one module")
            if ALL_LINEAR in value:
                if len(value) > 1:
                    raise ValueError("all-linear cannot be combined with module names")
                return ALL_LINEAR
            if len(set(value)) != len(value):
                raise ValueError("targetModules has duplicates")
        return value


class Hyperparameters(Model):
    """Optimisation settings."""

    epochs: Annotated[int, Field(ge=1)] = 1
    """Passes over the training data (ignored when `maxSteps` is set)."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Total optimizer steps; the data is cycled when it runs out."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    """Peak learning rate (of the A matrices when `loraPlusRatio` is set)."""
    scheduler: Scheduler = "cosine"
    """Schedule after warm-up: `linear` or `cosine` decay to 0, or `constant`."""
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    """Linear warm-up steps; excludes `warmupRatio`."""
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    """Warm-up as a fraction of the total steps (default 0.03 when neither is set)."""
    batch_size: Annotated[int, Field(ge=1)] = 8
    """Sequences per process per micro-batch."""
    gradient_accumulation: Annotated[int, Field(ge=1)] = 1
    """Micro-batches per optimizer step."""
    max_seq_length: Annotated[int, Field(ge=8)] = 2048
    """Examples are truncated to this many tokens; must not exceed the model's maximum."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Seed of the data order, the eval split, the LoRA initialisation and dropout."""
    packing: bool = False
    """Pack several whole examples into one sequence of up to `maxSeqLength` tokens."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    """Gradient clipping norm (null: no clipping)."""
    precision: Precision = "auto"
    """Compute precision: `auto` is bf16 on GPUs that support it, fp32 elsewhere."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""

    @model_validator(mode="after")
    def _one_warmup(self) -> Hyperparameters:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set either warmupSteps or warmupRatio, not both")
        return self

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        ratio = 0.03 if self.warmup_ratio is None else self.warmup_ratio
        return min(math.ceil(ratio * total_steps), total_steps)


class CheckpointConfig(Model):
    """Checkpoints, written under `<output>/.checkpoints/` so a retried Job resumes."""

    interval_steps: Annotated[int, Field(ge=1)] = 100
    """Write a checkpoint every N optimizer steps (and on SIGTERM)."""
    keep_last: Annotated[int, Field(ge=1)] = 1
    """Complete checkpoints kept while training; all are removed once the adapter is published."""


class ProgressConfig(Model):
    """Progress lines on stdout."""

    interval_steps: Annotated[int, Field(ge=1)] = 10
    """Emit a progress line every N optimizer steps (and at the last step)."""


class OutputConfig(Model):
    """Where the adapter is published."""

    uri: Annotated[str, Field(min_length=1)]
    """The adapter directory: `s3://bucket/prefix`, `pvc://claim/path`, `file:///path` or a local path."""
    credentials_secret_ref: dict[str, Any] | None = None
    """Operator-only (the Secret is mounted as environment variables); ignored here."""


class ReleaseConfig(Model):
    """Release metadata copied into the manifest."""

    name: str | None = None
    """The adapter's name (the LoraAdapter that will serve it)."""
    version: str | None = None
    """The adapter's release version."""
    prompt_version: str | None = None
    """The prompt version the adapter was trained for."""


class SigningConfig(Model):
    """Sign the finished adapter (OpenSSF model signing): paths of mounted files, never the key itself."""

    key_path: str | None = None
    """PEM EC private key (the operator mounts it from `spec.signing.keySecretRef`, mode 0400)."""
    certificate_path: str | None = None
    """Signing certificate for `keyPath` (certificate signing instead of a bare key)."""
    certificate_chain_paths: list[str] = Field(default_factory=list)
    """Intermediate certificates for `certificatePath`; paths that do not exist are skipped (optional key)."""
    sigstore: bool = False
    """Sigstore keyless signing with the pod's ambient OIDC identity (needs network access)."""
    key_secret_ref: dict[str, Any] | None = None
    """Operator-only (the Secret is mounted as a volume); ignored here."""
    certificate_secret_ref: dict[str, Any] | None = None
    """Operator-only; ignored here."""

    @model_validator(mode="after")
    def _one_way(self) -> SigningConfig:
        if self.sigstore == (self.key_path is not None):
            raise ValueError("set exactly one of keyPath or sigstore")
        if self.certificate_path is not None and self.key_path is None:
            raise ValueError("certificatePath needs keyPath")
        return self


OPERATOR_ONLY_FIELDS = frozenset({"resources", "image", "imagePullSecrets", "runPolicy", "adapterTemplate", "suspend"})
"""Top-level LoraTraining spec fields about the Job, not the training: accepted and dropped."""


class TrainConfig(Model):
    """Everything `loraops_trainer train` needs."""

    base_model: BaseModelConfig
    dataset: DatasetConfig
    method: Method = "lora"
    """`lora`, `qlora` (4-bit NF4 base), `dora` (weight-decomposed) or `rslora` (rank-stabilised)."""
    lora_plus_ratio: Annotated[float, Field(ge=1)] | None = None
    """LoRA+: the B matrices' learning rate is this many times that of the A matrices."""
    lora: LoraShape = Field(default_factory=LoraShape)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    progress: ProgressConfig = Field(default_factory=ProgressConfig)
    output: OutputConfig
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    signing: SigningConfig | None = None
    """Sign the adapter before publishing (rank 0 writes `model.sig`)."""

    @model_validator(mode="before")
    @classmethod
    def _accept_spec(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if k not in OPERATOR_ONLY_FIELDS}
        # The CRD keeps the checkpoint interval as one top-level field.
        if "checkpointIntervalSteps" in data:
            interval = data.pop("checkpointIntervalSteps")
            checkpoint = dict(data.get("checkpoint") or {})
            checkpoint.setdefault("intervalSteps", interval)
            data["checkpoint"] = checkpoint
        return data

    def fingerprint(self) -> str:
        """sha256 of everything that changes what is trained. A checkpoint or a published adapter with
        another fingerprint belongs to another training and is never resumed or overwritten."""
        relevant = self.model_dump(
            by_alias=True,
            mode="json",
            include={"base_model", "dataset", "method", "lora_plus_ratio", "lora", "hyperparameters"},
            exclude={"dataset": {"credentials_secret_ref"}},
        )
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_config(model: type[T], data: Any, source: str) -> T:
    """Validate `data` as `model`, turning pydantic's errors into one ConfigError naming each field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError("InvalidConfig", f"{source}: {_format_validation_error(error)}") from None


def read_config_file(path: str | pathlib.Path) -> Any:
    """Read a YAML or JSON file (JSON is YAML)."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("ConfigNotReadable", f"cannot read config {path}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError("InvalidConfig", f"{path} is neither YAML nor JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError("InvalidConfig", f"{path} must hold a mapping at the top level")
    return data


def load_train_config(path: str | pathlib.Path) -> TrainConfig:
    return parse_config(TrainConfig, read_config_file(path), str(path))
