"""kopf handlers for AdapterRoute (the rollout controller lands here; for now: acceptance and status)."""

from __future__ import annotations

import kopf

from loraops.api.kinds import ADAPTER_ROUTE
from loraops.config import OperatorConfig
from loraops.kube.acceptance import plan_acceptance
from loraops.kube.handlers import register_status_reconciler


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    register_status_reconciler(registry, ADAPTER_ROUTE, plan_acceptance, config.resync_seconds)
