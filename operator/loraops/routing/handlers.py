"""kopf shell of the AdapterRoute controller: observe adapters and router metrics → plan → write status.

`status.traffic` is what the routers serve (`loraops router --kube` watches it), so writing status is how
traffic moves. Analysis windows start from a metrics baseline kept in memory per (route, candidate, step):
after an operator restart the window starts again, which delays a decision but never makes a wrong one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from loraops.api.kinds import ADAPTER_ROUTE, LORA_ADAPTER
from loraops.api.route import AdapterRouteSpec, AdapterRouteStatus, AnalysisResult
from loraops.config import SERVICE_URL_ANNOTATION, VLLM_URL_ANNOTATION, OperatorConfig
from loraops.kube.client import PODS, SERVICES, KubeClient
from loraops.kube.handlers import accepted_spec, kind_resource, register_reconciler, register_timer, write_status

from .analysis import Snapshot, figures, result, summed, window
from .providers import BuiltinProvider, MetricsProvider, PrometheusProvider, open_circuits
from .rollout import ABORT_ANNOTATION, PROMOTE_ANNOTATION, AdapterView, ObservedRoute, plan_route

ACTIVE_PHASES = ("Pending", "Progressing", "Paused", "Degraded")


class RouteController:
    def __init__(self, client: KubeClient, config: OperatorConfig) -> None:
        self.client = client
        self.config = config
        self.baselines: dict[tuple[str, str, int, str], Snapshot] = {}

    def provider(self, spec: AdapterRouteSpec) -> MetricsProvider | None:
        if spec.analysis.provider.type == "prometheus" and spec.analysis.provider.url:
            return PrometheusProvider(spec.analysis.provider.url)
        return BuiltinProvider(self.config.router_metrics_urls) if self.config.router_metrics_urls else None

    async def reconcile(self, body: Any, logger: kopf.Logger) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return
        spec = await accepted_spec(self.client, ADAPTER_ROUTE, body)
        if not isinstance(spec, AdapterRouteSpec):
            return
        status = AdapterRouteStatus.model_validate(body.get("status") or {})
        annotations = meta.get("annotations") or {}
        replicas = await self._metrics(spec)
        observed = ObservedRoute(
            adapters=await self.adapters(meta["namespace"]),
            base_url=await self.base_url(spec, meta["namespace"]),
            analysis=self.analyse(meta["uid"], spec, status, replicas),
            promote=annotations.get(PROMOTE_ANNOTATION) == "true",
            abort=annotations.get(ABORT_ANNOTATION) == "true",
            open_circuits=open_circuits(replicas or [], spec.model),
        )
        plan = plan_route(spec, body.get("status"), observed, meta.get("generation"), _now())
        for event in plan.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        await write_status(self.client, ADAPTER_ROUTE, body, plan.status.wire())
        if plan.consumed_annotations:
            patch = {"metadata": {"annotations": dict.fromkeys(plan.consumed_annotations)}}
            await self.client.apatch(kind_resource(ADAPTER_ROUTE), meta["namespace"], meta["name"], patch)

    async def base_url(self, spec: AdapterRouteSpec, namespace: str) -> str:
        """The base Service's URL; in dev mode (only) a Service's `loraops.io/url` annotation overrides it."""
        if self.config.agent_url_annotation:
            service = await self.client.aget(SERVICES, namespace, spec.base.service)
            if url := self.config.dev_url(service, SERVICE_URL_ANNOTATION):
                return url
        return self.config.service_url_template.format(
            service=spec.base.service, namespace=namespace, port=spec.base.port
        )

    async def _metrics(self, spec: AdapterRouteSpec) -> list[Snapshot] | None:
        provider = self.provider(spec)
        if provider is None:
            return None
        try:
            return await provider.replicas(spec.model)
        except Exception as err:  # retried by kopf; a route is never judged on missing figures
            raise kopf.TemporaryError(f"cannot read router metrics: {err}", delay=self.config.retry_seconds) from err

    def analyse(
        self, uid: str, spec: AdapterRouteSpec, status: AdapterRouteStatus, replicas: list[Snapshot] | None
    ) -> AnalysisResult | None:
        """The verdict over the current step's window, or None before a baseline exists."""
        if (
            replicas is None
            or status.canary_adapter is None
            or status.current_step is None
            or not status.step_started_at
        ):
            return None
        key = (uid, status.canary_adapter, status.current_step, status.step_started_at.isoformat())
        now = summed(replicas)
        baseline = self.baselines.get(key)
        if baseline is None:
            self.baselines = {k: v for k, v in self.baselines.items() if k[0] != uid}  # older windows of this route
            self.baselines[key] = now
            return None
        delta = window(baseline, now)
        steps = spec.strategy.steps or []
        step = steps[status.current_step] if status.current_step < len(steps) else None
        mirror_only = step is not None and step.mirror is not None and step.weight is None
        candidate = figures(delta, spec.model, status.canary_adapter, mirror=mirror_only)
        stable = figures(delta, spec.model, status.stable_adapter) if status.stable_adapter else None
        return result(spec.analysis, status.current_step, candidate, stable, _now())

    async def adapters(self, namespace: str) -> dict[str, AdapterView]:
        views = {}
        pods = None
        for adapter in await self.client.aitems(kind_resource(LORA_ADAPTER), namespace):
            name = adapter["metadata"]["name"]
            status = adapter.get("status") or {}
            ready = status.get("phase") == "Ready" or any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            placements = [p for p in status.get("placements") or [] if p.get("state") == "Loaded"]
            if placements and pods is None:
                pods = {p["metadata"]["name"]: p for p in await self.client.aitems(PODS, namespace)}
            endpoints = tuple(url for p in placements if (url := self.pod_url((pods or {}).get(p["pod"]))) is not None)
            views[name] = AdapterView(
                name=name,
                ready=ready,
                reason="" if ready else (status.get("message") or f"phase {status.get('phase') or 'unknown'}"),
                served_name=status.get("servedName") or name,
                base_model=(adapter.get("spec") or {}).get("baseModel"),
                tenants=tuple(t) if (t := (adapter.get("spec") or {}).get("tenants")) else None,
                endpoints=endpoints,
            )
        return views

    def pod_url(self, pod: dict[str, Any] | None) -> str | None:
        if pod is None:
            return None
        if url := self.config.dev_url(pod, VLLM_URL_ANNOTATION):
            return url
        ip = (pod.get("status") or {}).get("podIP")
        return f"http://{ip}:{self.config.vllm_port}" if ip else None


def _now() -> datetime:
    return datetime.now(UTC)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, client: KubeClient) -> None:
    controller = RouteController(client, config)
    register_reconciler(registry, ADAPTER_ROUTE, controller.reconcile, config)
    # Steps end by time and analysis reads metrics, which send no events: look often while rolling out.
    register_timer(
        registry,
        ADAPTER_ROUTE,
        controller.reconcile,
        handler_id="rollout-tick",
        interval=config.rollout_tick_seconds,
        backoff=config.retry_seconds,
        when=lambda status, **_: status.get("phase") in ACTIVE_PHASES or bool(status.get("canaryAdapter")),
    )

    async def adapter_changed(*, namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
        """A LoraAdapter changed: every route of its namespace that may send it traffic reconciles."""
        if not namespace:
            return
        for body in await client.aitems(kind_resource(ADAPTER_ROUTE), namespace):
            spec = body.get("spec") or {}
            status = body.get("status") or {}
            names = {spec.get("adapter"), status.get("stableAdapter"), status.get("canaryAdapter")}
            names |= {rule.get("adapter") for rule in spec.get("tenants") or []}
            if name in names:
                await controller.reconcile(body, logger)

    kopf.on.event(
        LORA_ADAPTER.group, LORA_ADAPTER.version, LORA_ADAPTER.plural, registry=registry, id="follow-adapter"
    )(adapter_changed)
