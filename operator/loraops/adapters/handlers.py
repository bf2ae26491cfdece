"""kopf handlers for LoraAdapter (the adapter controller lands here; for now: acceptance and status)."""

from __future__ import annotations

import kopf

from loraops.api.kinds import LORA_ADAPTER
from loraops.config import OperatorConfig
from loraops.kube.acceptance import plan_acceptance
from loraops.kube.client import KubeClient
from loraops.kube.handlers import register_status_reconciler


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, client: KubeClient) -> None:
    register_status_reconciler(
        registry, LORA_ADAPTER, plan_acceptance, client, config.resync_seconds, config.retry_seconds
    )
