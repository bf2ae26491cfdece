"""Conditions as Kubernetes API conventions define them: one per type, lastTransitionTime kept while the
status does not change, observedGeneration of the spec they were computed from."""

from __future__ import annotations

from datetime import datetime

from loraops.api.common import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Return the conditions with `type_` set; other types are kept in their order."""
    current = {c.type: c for c in conditions or []}
    previous = current.get(type_)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    result = [updated if c.type == type_ else c for c in conditions or []]
    if previous is None:
        result.append(updated)
    return result


def find(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.type == type_), None)


def is_true(conditions: list[Condition] | None, type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.status == "True"
