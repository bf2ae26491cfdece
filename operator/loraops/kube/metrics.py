"""The operator's own Prometheus metrics: reconciles, their durations and errors, per kind."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "loraops_reconcile_total",
    "Reconciles by kind and result (ok, error).",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "loraops_reconcile_errors_total",
    "Reconciles that raised, by kind and error class.",
    ["kind", "error"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "loraops_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def instrumented(kind: str) -> Callable[[F], F]:
    """Count and time every call of an async handler for `kind`."""

    def decorate(fn: F) -> F:
        @wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as err:
                RECONCILES.labels(kind, "error").inc()
                RECONCILE_ERRORS.labels(kind, type(err).__name__).inc()
                raise
            finally:
                RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
            RECONCILES.labels(kind, "ok").inc()
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


OBJECT_PHASE = Gauge(
    "loraops_object_phase",
    "1 for the phase each loraops object is in (kind, namespace, name, phase).",
    ["kind", "namespace", "name", "phase"],
    registry=REGISTRY,
)
OBJECT_CONDITION = Gauge(
    "loraops_object_condition",
    "1 for the status of each condition of each loraops object (kind, namespace, name, type, status).",
    ["kind", "namespace", "name", "type", "status"],
    registry=REGISTRY,
)
_last: dict[tuple[str, str, str], tuple[str | None, dict[str, str]]] = {}


def record_status(kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Publish an object's phase and conditions, so alerts can say "not Ready for 10 minutes"."""
    key = (kind, namespace, name)
    phase = status.get("phase")
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or [] if "type" in c and "status" in c}
    old_phase, old_conditions = _last.get(key, (None, {}))
    if old_phase is not None and old_phase != phase:
        OBJECT_PHASE.remove(kind, namespace, name, old_phase)
    if phase is not None:
        OBJECT_PHASE.labels(kind, namespace, name, phase).set(1)
    for type_, value in old_conditions.items():
        if conditions.get(type_) != value:
            OBJECT_CONDITION.remove(kind, namespace, name, type_, value)
    for type_, value in conditions.items():
        OBJECT_CONDITION.labels(kind, namespace, name, type_, value).set(1)
    _last[key] = (phase, conditions)


def forget(kind: str, namespace: str, name: str) -> None:
    """A deleted object leaves no series behind."""
    record_status(kind, namespace, name, {})
    _last.pop((kind, namespace, name), None)
