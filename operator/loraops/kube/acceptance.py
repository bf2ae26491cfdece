"""The first decision every controller makes: is the stored spec one we can act on?

The API server rejects most bad input through the CRD schema and CEL rules; this catches what still gets
through (an older CRD installed, a schema-less dev API) and says so in status instead of crashing a handler.
Pure: spec + current status in, new status out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from loraops.api.common import ApiModel
from loraops.api.kinds import Kind

from .conditions import set_condition


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:10]:
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"spec.{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def parse_spec(kind: Kind, spec: dict[str, Any]) -> tuple[ApiModel | None, str | None]:
    """The typed spec, or the reason it cannot be used."""
    try:
        return kind.spec.model_validate(spec), None
    except ValidationError as err:
        return None, describe_validation_error(err)


def plan_acceptance(
    kind: Kind,
    spec: dict[str, Any],
    generation: int | None,
    status: dict[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status a controller that has no further work to do yet reports: `Accepted` and a phase."""
    current = kind.status.model_validate(status or {})
    _, problem = parse_spec(kind, spec)
    conditions = getattr(current, "conditions", None)
    if problem:
        conditions = set_condition(conditions, "Accepted", "False", "InvalidSpec", problem, generation, now)
        phase = kind.failed_phase
        message = f"invalid spec: {problem}"
    else:
        conditions = set_condition(conditions, "Accepted", "True", "SpecValid", "the spec is valid", generation, now)
        phase = getattr(current, "phase", None) or "Pending"
        message = getattr(current, "message", None) or f"{kind.kind} accepted; waiting for its controller's next step"
    updated = current.model_copy(
        update={
            "conditions": conditions,
            "phase": phase,
            "message": message,
            "observed_generation": generation,
        }
    )
    return updated.wire()
