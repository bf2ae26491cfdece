"""kopf handlers for AdapterRoute (the rollout controller lands here; for now: acceptance and status)."""

from __future__ import annotations

import kopf

from loraops.api.kinds import ADAPTER_ROUTE
from loraops.config import OperatorConfig
from loraops.kube.client import KubeClient
from loraops.kube.handlers import acceptance_reconciler, register_reconciler


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, client: KubeClient) -> None:
    register_reconciler(registry, ADAPTER_ROUTE, acceptance_reconciler(ADAPTER_ROUTE, client), config)
