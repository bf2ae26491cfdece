"""The LoraAdapter a succeeded training hands its output to (pure)."""

from __future__ import annotations

from typing import Any

from loraops.api.common import API_VERSION
from loraops.api.kinds import LORA_ADAPTER
from loraops.api.training import LoraTrainingSpec
from loraops.kube.objects import MANAGED_BY

from .planner import TRAINING_LABEL


def adapter_from_template(training: str, namespace: str, spec: LoraTrainingSpec) -> dict[str, Any]:
    """A LoraAdapter whose `source.trainingRef` names the training. Labelled with the lineage, not owned:
    deleting a training must never delete an adapter that may be serving traffic."""
    template = spec.adapter_template
    if template is None:
        raise ValueError("the training has no adapterTemplate")
    lora: dict[str, Any] = {
        "rank": spec.lora.rank,
        "alpha": spec.lora.alpha,
        "targetModules": list(spec.lora.target_modules),
        "method": spec.method,
    }
    source: dict[str, Any] = {"trainingRef": {"name": training}}
    if template.signature is not None:
        source["signature"] = template.signature.wire()
    adapter_spec: dict[str, Any] = {
        "baseModel": spec.base_model.name,
        "source": source,
        "lora": lora,
        "release": {
            "version": template.release_version or f"0.0.0-{training}",
            "datasetVersion": spec.dataset.version,
            "mergeState": "unmerged",
            **({"promptVersion": template.prompt_version} if template.prompt_version else {}),
        },
        "provenance": {
            "owner": template.owner or f"namespace/{namespace}",
            "license": template.license or "unspecified",
            "dataSources": [spec.dataset.uri],
        },
        "serving": template.serving.wire(),
    }
    if template.tenants:
        adapter_spec["tenants"] = list(template.tenants)
    return {
        "apiVersion": API_VERSION,
        "kind": LORA_ADAPTER.kind,
        "metadata": {
            "name": template.name or training,
            "namespace": namespace,
            "labels": {TRAINING_LABEL: training, **MANAGED_BY},
        },
        "spec": adapter_spec,
    }
