"""kopf shell of the LoraTraining controller: observe → plan → apply, for the training and its Job.

Re-running is always safe: objects have deterministic names, a create that answers 409 means "already
there" (adopted if it is ours, reported if not), so retries, operator restarts and flaky API answers never
start a second training on paid GPUs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from loraops.api.common import API_VERSION
from loraops.api.kinds import LORA_ADAPTER, LORA_TRAINING
from loraops.api.training import LoraTrainingSpec
from loraops.config import OperatorConfig
from loraops.kube.client import CONFIGMAPS, JOBS, PODS, SERVICES, ApiError, KubeClient, Resource
from loraops.kube.handlers import accepted_spec, kind_resource, register_reconciler, register_timer, write_status
from loraops.kube.objects import Owner

from .lineage import adapter_from_template
from .planner import TRAINING_LABEL, names_for, render
from .status import Observed, plan_status, rank_zero_pod

RESOURCES: dict[str, Resource] = {"ConfigMap": CONFIGMAPS, "Service": SERVICES, "Job": JOBS}
ACTIVE_PHASES = ("Running",)  # logs exist only while pods run; events cover the rest
LOG_TAIL_LINES = 40


class TrainingController:
    def __init__(self, client: KubeClient, config: OperatorConfig) -> None:
        self.client = client
        self.config = config

    async def reconcile(self, body: Any, logger: kopf.Logger) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return
        namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
        spec = await accepted_spec(self.client, LORA_TRAINING, body)
        if not isinstance(spec, LoraTrainingSpec):
            return
        owner = Owner(API_VERSION, LORA_TRAINING.kind, name, namespace, meta["uid"])
        names = names_for(name)
        job = await self.ensure_objects(owner, spec, body, logger)
        if job is not None and bool((job.get("spec") or {}).get("suspend")) != spec.suspend:
            job = await self.client.apatch(JOBS, namespace, names.job, {"spec": {"suspend": spec.suspend}})
        observed = await self.observe(namespace, name, job)
        desired, events = plan_status(body.get("status"), generation, names.job, observed, _now())
        for event in events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        if desired.get("phase") == "Succeeded" and desired.get("output") and spec.adapter_template:
            desired["adapterRef"] = {"name": await self.ensure_adapter(body, spec)}
        await write_status(self.client, LORA_TRAINING, body, desired)

    async def ensure_objects(
        self, owner: Owner, spec: LoraTrainingSpec, body: Any, logger: kopf.Logger
    ) -> dict[str, Any] | None:
        """Create what is missing; returns the Job (None if it could not be had)."""
        job: dict[str, Any] | None = None
        for obj in render(owner, spec, self.config):
            resource, name = RESOURCES[obj["kind"]], obj["metadata"]["name"]
            existing = await self.client.aget(resource, owner.namespace, name)
            if existing is None:
                existing = await self.client.acreate_if_absent(resource, owner.namespace, obj)
                if existing is None:  # created meanwhile (409): judge the one that is there
                    existing = await self.client.aget(resource, owner.namespace, name)
                elif obj["kind"] == "Job":
                    kopf.event(body, type="Normal", reason="JobCreated", message=f"created Job {name}")
            if existing is not None and not _owned_by(existing, owner.uid):
                message = f"{obj['kind']} {name} exists and is not owned by this LoraTraining: rename or delete it"
                kopf.event(body, type="Warning", reason="NameConflict", message=message)
                raise kopf.TemporaryError(message, delay=60)
            if obj["kind"] == "Job":
                job = existing
        return job

    async def observe(self, namespace: str, name: str, job: dict[str, Any] | None) -> Observed:
        if job is None:
            return Observed(job=None)
        pods = await self.client.aitems(PODS, namespace, f"{TRAINING_LABEL}={name}")
        pod = rank_zero_pod(pods)
        log_tail = ""
        if pod is not None and (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
            try:
                log_tail = await self.client.apod_log(namespace, pod["metadata"]["name"], tail_lines=LOG_TAIL_LINES)
            except ApiError:
                log_tail = ""  # logs are best effort: progress waits for the next look
        return Observed(job=job, pods=pods, log_tail=log_tail)

    async def ensure_adapter(self, body: Any, spec: LoraTrainingSpec) -> str:
        """Create the adapter of `adapterTemplate` once; returns its name."""
        namespace = body["metadata"]["namespace"]
        adapter = adapter_from_template(body["metadata"]["name"], namespace, spec)
        name: str = adapter["metadata"]["name"]
        resource = kind_resource(LORA_ADAPTER)
        missing = await self.client.aget(resource, namespace, name) is None
        if missing and await self.client.acreate_if_absent(resource, namespace, adapter) is not None:
            kopf.event(body, type="Normal", reason="AdapterCreated", message=f"created LoraAdapter {name}")
        return name

    async def finalize(self, body: kopf.Body, logger: kopf.Logger) -> None:
        """The Job and its pods go; the trained artifacts stay (they may already be a served release)."""
        meta = body["metadata"]
        names = names_for(meta["name"])
        await self.client.adelete(JOBS, meta["namespace"], names.job)
        for pod in await self.client.aitems(PODS, meta["namespace"], f"{TRAINING_LABEL}={meta['name']}"):
            await self.client.adelete(PODS, meta["namespace"], pod["metadata"]["name"])


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _now() -> datetime:
    return datetime.now(UTC)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, client: KubeClient) -> None:
    controller = TrainingController(client, config)
    register_reconciler(registry, LORA_TRAINING, controller.reconcile, config, finalize=controller.finalize)
    # Progress comes from the pod log, which sends no events: look while (and only while) it runs.
    register_timer(
        registry,
        LORA_TRAINING,
        controller.reconcile,
        handler_id="progress",
        interval=config.progress_seconds,
        backoff=config.retry_seconds,
        when=lambda status, **_: status.get("phase") in ACTIVE_PHASES,
    )

    async def follow_child(*, namespace: str | None, labels: kopf.Labels, logger: kopf.Logger, **_: Any) -> None:
        owner = labels.get(TRAINING_LABEL)
        if not owner or not namespace:
            return
        body = await client.aget(kind_resource(LORA_TRAINING), namespace, owner)
        if body is not None:
            await controller.reconcile(body, logger)

    children = {TRAINING_LABEL: kopf.PRESENT}
    kopf.on.event("batch", "v1", "jobs", registry=registry, labels=children, id="follow-job")(follow_child)
    kopf.on.event("", "v1", "pods", registry=registry, labels=children, id="follow-pod")(follow_child)
