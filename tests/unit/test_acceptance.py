"""The shared first step of every controller: conditions, acceptance planning and status patches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loraops.api import ADAPTER_ROUTE, KINDS, LORA_ADAPTER
from loraops.api.common import Condition
from loraops.kube.acceptance import plan_acceptance
from loraops.kube.conditions import find, is_true, set_condition
from loraops.kube.handlers import status_patch

pytestmark = pytest.mark.operator

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    first = set_condition(None, "Ready", "False", "Loading", "2 of 3 loaded", 1, T0)
    same = set_condition(first, "Ready", "False", "Loading", "1 of 3 loaded", 2, T1)
    assert same[0].last_transition_time == T0
    assert same[0].message == "1 of 3 loaded" and same[0].observed_generation == 2
    flipped = set_condition(same, "Ready", "True", "Loaded", "3 of 3 loaded", 2, T1)
    assert flipped[0].last_transition_time == T1 and is_true(flipped, "Ready")


def test_set_condition_keeps_other_types_in_order() -> None:
    conditions = set_condition(None, "Verified", "True", "DigestMatches", "", 1, T0)
    conditions = set_condition(conditions, "Ready", "False", "Loading", "", 1, T0)
    conditions = set_condition(conditions, "Verified", "False", "DigestMismatch", "bad bytes", 2, T1)
    assert [c.type for c in conditions] == ["Verified", "Ready"]
    verified = find(conditions, "Verified")
    assert verified is not None and verified.reason == "DigestMismatch"
    assert find(conditions, "Evaluated") is None and not is_true(conditions, "Evaluated")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_valid_spec_is_accepted_with_observed_generation(kind: Any, examples: dict[str, Any]) -> None:
    status = plan_acceptance(kind, examples[kind.kind]["spec"], 3, None, T0)
    assert status["observedGeneration"] == 3
    assert status["phase"] == "Pending"
    (accepted,) = status["conditions"]
    assert accepted["type"] == "Accepted" and accepted["status"] == "True"
    assert accepted["observedGeneration"] == 3
    kind.status.model_validate(status)  # what we write is what the schema describes


def test_invalid_spec_is_explained_in_status_not_raised(examples: dict[str, Any]) -> None:
    spec = examples["LoraAdapter"]["spec"]
    spec["lora"]["rank"] = 0
    status = plan_acceptance(LORA_ADAPTER, spec, 2, None, T0)
    assert status["phase"] == "Failed"
    (accepted,) = status["conditions"]
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
    assert "spec.lora.rank" in accepted["message"]


def test_route_with_invalid_spec_is_degraded(examples: dict[str, Any]) -> None:
    spec = examples["AdapterRoute"]["spec"]
    del spec["base"]
    status = plan_acceptance(ADAPTER_ROUTE, spec, 1, None, T0)
    assert status["phase"] == "Degraded"
    assert "spec.base" in status["conditions"][0]["message"]


def test_replanning_an_unchanged_object_changes_nothing(examples: dict[str, Any]) -> None:
    spec = examples["LoraAdapter"]["spec"]
    first = plan_acceptance(LORA_ADAPTER, spec, 1, None, T0)
    again = plan_acceptance(LORA_ADAPTER, spec, 1, first, T1)
    assert status_patch(first, again) == {}


def test_planner_keeps_fields_it_does_not_own(examples: dict[str, Any]) -> None:
    current = {"phase": "Ready", "readyReplicas": "3/3", "servedName": "support-v1-9f2b6c1d"}
    status = plan_acceptance(LORA_ADAPTER, examples["LoraAdapter"]["spec"], 1, current, T0)
    assert status["phase"] == "Ready" and status["readyReplicas"] == "3/3"


def test_status_patch_sets_changes_and_removes_missing_keys() -> None:
    current = {"phase": "Pending", "message": "old", "jobName": "j"}
    desired = {"phase": "Running", "message": "old"}
    assert status_patch(current, desired) == {"phase": "Running", "jobName": None}
    assert status_patch(None, desired) == desired


def test_condition_model_rejects_non_camelcase_reason() -> None:
    with pytest.raises(ValueError):
        Condition(type="Ready", status="True", reason="not a reason", last_transition_time=T0)


def test_peering_replicas_draw_distinct_priorities_unless_one_is_given() -> None:
    from loraops.config import OperatorConfig
    from loraops.runtime import peering_priority

    assert peering_priority(OperatorConfig(standalone=True)) is None
    assert peering_priority(OperatorConfig(standalone=False, priority=7)) == 7
    drawn = {peering_priority(OperatorConfig(standalone=False)) for _ in range(20)}
    assert len(drawn) > 1 and all(p is not None and p > 0 for p in drawn)


def test_object_phase_and_condition_metrics_follow_status() -> None:
    from loraops.kube.metrics import REGISTRY, forget, record_status

    def value(metric: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(metric, labels)

    who = {"kind": "LoraAdapter", "namespace": "ns", "name": "a1"}
    ready = {"type": "Ready", "status": "False"}
    record_status("LoraAdapter", "ns", "a1", {"phase": "Loading", "conditions": [ready]})
    assert value("loraops_object_phase", **who, phase="Loading") == 1
    assert value("loraops_object_condition", **who, type="Ready", status="False") == 1
    record_status("LoraAdapter", "ns", "a1", {"phase": "Ready", "conditions": [{**ready, "status": "True"}]})
    assert value("loraops_object_phase", **who, phase="Loading") is None, "the old phase series is gone"
    assert value("loraops_object_phase", **who, phase="Ready") == 1
    assert value("loraops_object_condition", **who, type="Ready", status="False") is None
    forget("LoraAdapter", "ns", "a1")
    assert value("loraops_object_phase", **who, phase="Ready") is None
