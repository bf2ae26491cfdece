"""The adapters that target one Deployment, seen together (pure): what they need from it, what to place.

Every adapter's reconcile computes these from the same listing, so they agree without talking to each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from loraops.api.adapter import LoraAdapterSpec
from loraops.config import OperatorConfig

from .deployment import AGENT_CONTAINER, CREDENTIALS_DIR, DeploymentPlan, Needs, rank_limit, vllm_container
from .placement import AdapterWant
from .preflight import Source, Verdict, preflight, resolve_source
from .signature import secrets_for

Obj = dict[str, Any]


@dataclass(frozen=True)
class Member:
    name: str
    created: str
    spec: LoraAdapterSpec
    source: Source | Verdict


def members(adapters: list[Obj], trainings: dict[str, Obj], deployment: str) -> list[Member]:
    """Adapters (not being deleted, with a usable spec) that target `deployment`."""
    found = []
    for body in adapters:
        meta = body.get("metadata") or {}
        if (
            meta.get("deletionTimestamp")
            or ((body.get("spec") or {}).get("serving") or {}).get("deployment") != deployment
        ):
            continue
        try:
            spec = LoraAdapterSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            continue
        ref = spec.source.training_ref
        training = trainings.get(ref.name) if ref else None
        found.append(
            Member(meta["name"], str(meta.get("creationTimestamp") or ""), spec, resolve_source(spec, training))
        )
    return found


def mounted_credentials(deployment: Obj | None) -> frozenset[str]:
    """Credentials Secrets the agent sidecar already mounts: kept, so that needs only grow (no flapping
    between reconciles that see different adapters, no roll when an adapter goes)."""
    agent = vllm_container(deployment or {}, AGENT_CONTAINER)
    prefix = f"{CREDENTIALS_DIR}/"
    return frozenset(
        m["mountPath"].removeprefix(prefix)
        for m in (agent or {}).get("volumeMounts") or []
        if str(m.get("mountPath", "")).startswith(prefix)
    )


def needs(group: list[Member], deployment: Obj | None, config: OperatorConfig) -> Needs:
    limit = rank_limit(config)
    # Ranks over the bound are refused by the preflight; they must not stop the others' raise.
    ranks = [m.source.rank for m in group if isinstance(m.source, Source) and m.source.rank is not None]
    credentials = {
        m.source.credentials_secret for m in group if isinstance(m.source, Source) and m.source.credentials_secret
    }
    # Trust roots kept in Secrets are mounted like read credentials: the agents read them, the operator never.
    credentials |= {secret for m in group for secret in secrets_for(m.spec)}
    return Needs(
        max_rank=max((r for r in ranks if r <= limit), default=None),
        adapters=len(group),
        credentials=frozenset(c for c in credentials if c) | mounted_credentials(deployment),
    )


def wants(
    group: list[Member], deployment: Obj | None, plan: DeploymentPlan | None, config: OperatorConfig
) -> list[AdapterWant]:
    result = []
    for member in group:
        placeable = isinstance(member.source, Source) and (
            preflight(member.spec, member.source, deployment, plan, config).status == "True"
        )
        result.append(AdapterWant(member.name, member.created, member.spec.serving.replicas, placeable))
    return result
