"""The three kinds: names, models, printer columns and the rules that only make sense at the top level."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .adapter import LoraAdapterSpec, LoraAdapterStatus
from .common import API_VERSION, GROUP, VERSION, ApiModel
from .route import AdapterRouteSpec, AdapterRouteStatus
from .training import LoraTrainingSpec, LoraTrainingStatus

CATEGORY = "loraops"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_name: str
    spec: type[ApiModel]
    status: type[ApiModel]
    description: str
    columns: tuple[PrinterColumn, ...]
    failed_phase: str = "Failed"
    """The phase reported when the spec cannot be acted on."""
    root_rules: tuple[dict[str, str], ...] = ()
    spec_rules: tuple[dict[str, str], ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def api_version(self) -> str:
        return API_VERSION

    @property
    def group(self) -> str:
        return GROUP

    @property
    def version(self) -> str:
        return VERSION


def immutable_except(model: type[BaseModel], mutable: set[str], message: str) -> dict[str, str]:
    """A CEL transition rule that keeps every field of `model` as it was, except the `mutable` ones."""
    clauses = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        if wire in mutable:
            continue
        if info.is_required():
            clauses.append(f"self.{wire} == oldSelf.{wire}")
        else:
            clauses.append(
                f"(has(self.{wire}) == has(oldSelf.{wire})) && (!has(self.{wire}) || self.{wire} == oldSelf.{wire})"
            )
    return {"rule": " && ".join(clauses), "message": message}


LORA_TRAINING = Kind(
    kind="LoraTraining",
    plural="loratrainings",
    short_name="lt",
    spec=LoraTrainingSpec,
    status=LoraTrainingStatus,
    description="A LoRA training run: a GPU Job that trains an adapter and reports progress and its digest.",
    columns=(
        PrinterColumn("Base", ".spec.baseModel.name", description="Base model"),
        PrinterColumn("Method", ".spec.method"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Progress", ".status.progress.percent", "integer", "Percent of steps done"),
        PrinterColumn("Loss", ".status.progress.loss", "number", "Last training loss"),
        PrinterColumn("Job", ".status.jobName", priority=1),
        AGE,
    ),
    spec_rules=(
        immutable_except(
            LoraTrainingSpec,
            {"suspend"},
            "a LoraTraining's spec is immutable except spec.suspend: create a new LoraTraining to train again",
        ),
    ),
)

LORA_ADAPTER = Kind(
    kind="LoraAdapter",
    plural="loraadapters",
    short_name="la",
    spec=LoraAdapterSpec,
    status=LoraAdapterStatus,
    description="A released LoRA adapter: verified artifact, release metadata, provenance, evaluation and "
    "its placement on the replicas of a vLLM Deployment.",
    columns=(
        PrinterColumn("Base", ".spec.baseModel", description="Base model"),
        PrinterColumn("Version", ".spec.release.version"),
        PrinterColumn("Ready", ".status.readyReplicas", description="Replicas holding it / wanted"),
        PrinterColumn("Eval Δ", ".status.evaluation.delta", "number", "Adapter minus base on the golden set"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Served As", ".status.servedName", priority=1),
        AGE,
    ),
    root_rules=(
        {
            "rule": "size(self.metadata.name) <= 63",
            "message": "metadata.name must be at most 63 characters: it is also the adapter's served name",
        },
    ),
    spec_rules=(
        {
            "rule": "self.baseModel == oldSelf.baseModel",
            "message": "spec.baseModel is immutable: release a new LoraAdapter for another base model",
            "fieldPath": ".baseModel",
        },
    ),
)

ADAPTER_ROUTE = Kind(
    kind="AdapterRoute",
    plural="adapterroutes",
    short_name="ar",
    spec=AdapterRouteSpec,
    status=AdapterRouteStatus,
    description="A model name served by LoRA adapters per tenant, with progressive delivery between "
    "versions and fallback to the base model.",
    columns=(
        PrinterColumn("Model", ".spec.model"),
        PrinterColumn("Stable", ".status.stableAdapter"),
        PrinterColumn("Canary", ".status.canaryAdapter"),
        PrinterColumn("Weight", ".status.canaryWeight", "integer", "Percent of default traffic on the canary"),
        PrinterColumn("Phase", ".status.phase"),
        AGE,
    ),
    failed_phase="Degraded",
    root_rules=(
        {
            "rule": "size(self.metadata.name) <= 63",
            "message": "metadata.name must be at most 63 characters: it is used as a label value",
        },
    ),
)

KINDS: tuple[Kind, ...] = (LORA_TRAINING, LORA_ADAPTER, ADAPTER_ROUTE)
KINDS_BY_NAME: dict[str, Kind] = {k.kind: k for k in KINDS}
