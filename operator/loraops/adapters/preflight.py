"""Source resolution and the compatibility preflight (pure).

vLLM answers an adapter over `--max-lora-rank` with a bare 500 and loads adapters of another base model
without complaint (NOTES), so these checks run before anything is sent to an agent, and each refusal says
exactly what does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraops.api.adapter import LoraAdapterSpec
from loraops.api.common import ConditionStatus
from loraops.config import OperatorConfig

from .deployment import DeploymentPlan, rank_limit

Obj = dict[str, Any]

VLLM_LORA_MODULES = frozenset(
    {
        # Llama, Mistral, Qwen, Gemma, Phi-3 and most decoder-only families (vLLM packs q/k/v and gate/up)
        "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj",
        # GPT-NeoX / Falcon / BLOOM, GPT-2 / StarCoder, Mixtral experts, InternLM2, MPT, Phi-2, OPT, Mamba-hybrids
        "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "c_attn", "c_proj", "c_fc",
        "w1", "w2", "w3", "wqkv", "wo", "Wqkv", "fc1", "fc2", "out_proj", "in_proj",
        "all-linear",
    }
)  # fmt: skip
"""Module names vLLM applies LoRA weights to. Embeddings and `lm_head` (PEFT `modules_to_save`) are not."""


@dataclass(frozen=True)
class Source:
    """The artifact to load, once resolved."""

    uri: str
    digest: str
    credentials_secret: str | None = None
    trained_base_model: str | None = None
    """The base model the training used (trainingRef only)."""
    rank: int | None = None
    target_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Verdict:
    status: ConditionStatus
    reason: str
    message: str


def resolve_source(spec: LoraAdapterSpec, training: Obj | None) -> Source | Verdict:
    """The artifact (uri, digest, credentials) or why it is not known yet."""
    source = spec.source
    lora = spec.lora
    declared_rank = lora.rank if lora else None
    declared_modules = tuple(lora.target_modules) if lora and lora.target_modules else None
    if source.uri and source.sha256:
        secret = source.credentials_secret_ref.name if source.credentials_secret_ref else None
        secret = secret if source.uri.startswith("s3://") else None
        return Source(source.uri, source.sha256, secret, None, declared_rank, declared_modules)
    if source.training_ref is None:
        return Verdict("False", "InvalidSource", "set source.uri with source.sha256, or source.trainingRef")
    name = source.training_ref.name
    if training is None:
        return Verdict("False", "TrainingNotFound", f"LoraTraining {name} does not exist in this namespace")
    status = training.get("status") or {}
    phase = status.get("phase") or "Pending"
    output = status.get("output") or {}
    if phase == "Failed":
        return Verdict("False", "TrainingFailed", f"LoraTraining {name} failed: {status.get('message', '')}".strip())
    if phase != "Succeeded" or not output.get("uri") or not output.get("sha256"):
        return Verdict("Unknown", "TrainingPending", f"waiting for LoraTraining {name} to succeed (phase {phase})")
    tspec = training.get("spec") or {}
    uri = str(output["uri"])
    tlora = tspec.get("lora") or {}
    secret = ((tspec.get("output") or {}).get("credentialsSecretRef") or {}).get("name")
    secret = secret if uri.startswith("s3://") else None  # the Secret holds S3 keys; other schemes need none
    modules = declared_modules or (tuple(tlora["targetModules"]) if tlora.get("targetModules") else None)
    return Source(
        uri=uri,
        digest=str(output["sha256"]),
        credentials_secret=secret,
        trained_base_model=(tspec.get("baseModel") or {}).get("name"),
        rank=declared_rank or tlora.get("rank"),
        target_modules=modules,
    )


def preflight(
    spec: LoraAdapterSpec,
    source: Source,
    deployment: Obj | None,
    plan: DeploymentPlan | None,
    config: OperatorConfig,
) -> Verdict:
    """Condition `Compatible`: the first reason the adapter cannot serve on the target, or True."""
    target = spec.serving.deployment
    if deployment is None or plan is None:
        return Verdict("False", "DeploymentNotFound", f"Deployment {target} does not exist in this namespace")
    if plan.conflicts:
        return Verdict("False", "DeploymentConflict", f"Deployment {target}: " + "; ".join(plan.conflicts))
    if source.trained_base_model and source.trained_base_model != spec.base_model:
        return Verdict(
            "False",
            "TrainingBaseMismatch",
            f"the training used base model {source.trained_base_model}, the adapter declares {spec.base_model}",
        )
    if spec.base_model not in plan.served_models:
        served = ", ".join(plan.served_models) or "no model name found in its vLLM arguments"
        return Verdict(
            "False",
            "BaseModelMismatch",
            f"the adapter is for {spec.base_model}; Deployment {target} serves {served}",
        )
    limit = rank_limit(config)
    if source.rank is not None and source.rank > limit:
        return Verdict(
            "False",
            "RankTooHigh",
            f"rank {source.rank} exceeds the operator's --max-lora-rank bound {limit} "
            "(OperatorConfig max_lora_rank_limit)",
        )
    if source.rank is not None and plan.limits is not None and source.rank > plan.limits.max_lora_rank:
        return Verdict(
            "False",
            "RankTooHigh",
            f"rank {source.rank} exceeds --max-lora-rank {plan.limits.max_lora_rank} of Deployment {target}",
        )
    unsupported = sorted(set(source.target_modules or ()) - VLLM_LORA_MODULES)
    if unsupported:
        return Verdict(
            "False",
            "UnsupportedTargetModules",
            f"vLLM does not apply LoRA to {', '.join(unsupported)} (embeddings and lm_head are not adaptable; "
            "retrain with attention/MLP projections)",
        )
    rank = f"rank {source.rank}" if source.rank is not None else "rank not declared"
    assert plan.limits is not None
    return Verdict(
        "True",
        "Compatible",
        f"base {spec.base_model} served by {target}; {rank} ≤ --max-lora-rank {plan.limits.max_lora_rank}",
    )
