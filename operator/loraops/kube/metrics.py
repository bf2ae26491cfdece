"""The operator's own Prometheus metrics: reconciles, their durations and errors, per kind."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

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
