"""The kopf shell every kind shares: a level-triggered reconcile and a finalizer.

kopf records a handler as done before its status write lands (FAKE_API.md: "a lost status write is lost
for good"), so status is never only a handler's one-time result: the same reconcile runs on create, update,
resume and on a slow timer, recomputes status from what it observes, and patches only what differs. Status
is written by the controller's own client, not through kopf's `patch`: a failed write raises, and kopf
retries the handler instead of recording it as done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from loraops.api.common import ApiModel
from loraops.api.kinds import Kind
from loraops.config import OperatorConfig

from .acceptance import parse_spec, plan_acceptance
from .client import KubeClient, Resource
from .metrics import forget, instrumented, record_status

Reconcile = Callable[[kopf.Body, kopf.Logger], Awaitable[None]]


def status_patch(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `current` into `desired` at the top level of status (None removes a key)."""
    current = current or {}
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return patch


def kind_resource(kind: Kind) -> Resource:
    return Resource(kind.group, kind.version, kind.plural)


async def write_status(
    client: KubeClient, kind: Kind, body: kopf.Body | dict[str, Any], desired: dict[str, Any]
) -> dict[str, Any]:
    """Patch the status keys that differ from `desired`; returns the patch (empty: nothing written)."""
    changes = status_patch(dict(body.get("status") or {}), desired)
    meta = body["metadata"]
    if changes:
        await client.apatch(kind_resource(kind), meta.get("namespace"), meta["name"], {"status": changes}, sub="status")
    record_status(kind.kind, meta.get("namespace") or "", meta["name"], desired)
    return changes


async def accepted_spec(client: KubeClient, kind: Kind, body: kopf.Body | dict[str, Any]) -> ApiModel | None:
    """The typed spec; or None, once status says why the stored spec cannot be used (`Accepted=False`)."""
    raw = dict(body.get("spec") or {})
    spec, problem = parse_spec(kind, raw)
    if problem is None:
        return spec
    meta = body["metadata"]
    desired = plan_acceptance(kind, raw, meta.get("generation"), body.get("status"), datetime.now(UTC))
    await write_status(client, kind, body, desired)
    return None


def kopf_handler(kind: Kind, reconcile: Reconcile) -> Callable[..., Awaitable[None]]:
    """`reconcile` as a kopf handler (kopf passes its kwargs by name), counted in the per-kind metrics."""

    @instrumented(kind.kind)
    async def handler(*, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        await reconcile(body, logger)

    return handler


def register_reconciler(
    registry: kopf.OperatorRegistry,
    kind: Kind,
    reconcile: Reconcile,
    config: OperatorConfig,
    finalize: Reconcile | None = None,
) -> None:
    resource = (kind.group, kind.version, kind.plural)
    on_change = kopf_handler(kind, reconcile)

    for decorator, handler_id in (
        (kopf.on.create, "reconcile-create"),
        (kopf.on.update, "reconcile-update"),
        (kopf.on.resume, "reconcile-resume"),
    ):
        decorator(*resource, registry=registry, id=handler_id, backoff=config.retry_seconds)(on_change)
    kopf.timer(
        *resource,
        registry=registry,
        id="resync",
        interval=config.resync_seconds,
        idle=config.resync_seconds,
        backoff=config.retry_seconds,
    )(on_change)

    @instrumented(kind.kind)
    async def on_delete(*, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        if finalize is not None:
            await finalize(body, logger)
        forget(kind.kind, body["metadata"].get("namespace") or "", body["metadata"]["name"])
        logger.info("%s %s/%s released", kind.kind, body["metadata"].get("namespace"), body["metadata"]["name"])

    kopf.on.delete(*resource, registry=registry, id="finalize", backoff=config.retry_seconds)(on_delete)


def register_timer(
    registry: kopf.OperatorRegistry,
    kind: Kind,
    reconcile: Reconcile,
    *,
    handler_id: str,
    interval: float,
    backoff: float,
    when: Callable[..., bool],
) -> None:
    """Reconcile on a timer while `when(status=...)` holds: for what sends no events (pod logs, metrics, time)."""
    kopf.timer(
        kind.group, kind.version, kind.plural, registry=registry, id=handler_id, interval=interval, backoff=backoff,
        when=when,
    )(kopf_handler(kind, reconcile))  # fmt: skip
