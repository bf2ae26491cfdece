"""The kopf shell every kind shares: a level-triggered status reconcile and a finalizer.

kopf records a handler as done before its status write lands (FAKE_API.md: "a lost status write is lost
for good"), so status is never only a handler's one-time result: the same reconcile runs on create, update,
resume and on a slow timer, recomputes status from what it observes, and patches only what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from loraops.api.kinds import Kind

from .client import KubeClient, Resource
from .metrics import instrumented

StatusPlanner = Callable[[Kind, dict[str, Any], int | None, dict[str, Any] | None, datetime], dict[str, Any]]


def status_patch(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `current` into `desired` at the top level of status (None removes a key)."""
    current = current or {}
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return patch


def kind_resource(kind: Kind) -> Resource:
    return Resource(kind.group, kind.version, kind.plural)


def register_status_reconciler(
    registry: kopf.OperatorRegistry,
    kind: Kind,
    plan: StatusPlanner,
    client: KubeClient,
    resync_seconds: float,
    retry_seconds: float,
) -> None:
    resource = (kind.group, kind.version, kind.plural)
    api_resource = kind_resource(kind)

    @instrumented(kind.kind)
    async def reconcile(
        spec: kopf.Spec,
        status: kopf.Status,
        meta: kopf.Meta,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        desired = plan(kind, dict(spec), meta.get("generation"), dict(status), datetime.now(UTC))
        changes = status_patch(dict(status), desired)
        if changes:
            # Written here, not through kopf's `patch`: a failed write raises, so kopf retries the handler
            # instead of recording it as done with its status lost.
            await client.apatch(api_resource, meta.get("namespace"), meta["name"], {"status": changes}, sub="status")
            logger.debug("status of %s changes: %s", kind.kind, sorted(changes))

    for decorator, handler_id in (
        (kopf.on.create, "reconcile-create"),
        (kopf.on.update, "reconcile-update"),
        (kopf.on.resume, "reconcile-resume"),
    ):
        decorator(*resource, registry=registry, id=handler_id, backoff=retry_seconds)(reconcile)
    kopf.timer(
        *resource, registry=registry, id="resync", interval=resync_seconds, idle=resync_seconds, backoff=retry_seconds
    )(reconcile)

    async def finalize(*, meta: kopf.Meta, logger: kopf.Logger, **_: Any) -> None:
        logger.info("%s %s/%s deleted; releasing it", kind.kind, meta.get("namespace"), meta.get("name"))

    kopf.on.delete(*resource, registry=registry, id="finalize")(instrumented(kind.kind)(finalize))
