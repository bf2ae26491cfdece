"""Conditions as Kubernetes API conventions define them: one per type, lastTransitionTime kept while the
status does not change, observedGeneration of the spec they were computed from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from loraops.api.common import Condition, ConditionStatus

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event that a change of status is worth (the controllers' planners return them)."""

    type: EventType
    reason: str
    message: str


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
    previous = find(conditions, type_)
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


def is_transition(before: Condition | None, status: ConditionStatus, reason: str) -> bool:
    """Setting (`status`, `reason`) over `before` is news: a new condition, another status or another reason."""
    return before is None or before.status != status or before.reason != reason
