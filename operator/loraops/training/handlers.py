"""kopf handlers for LoraTraining (the training controller lands here; for now: acceptance and status)."""

from __future__ import annotations

import kopf

from loraops.api.kinds import LORA_TRAINING
from loraops.config import OperatorConfig
from loraops.kube.acceptance import plan_acceptance
from loraops.kube.handlers import register_status_reconciler


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    register_status_reconciler(registry, LORA_TRAINING, plan_acceptance, config.resync_seconds)
