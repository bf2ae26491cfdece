"""kopf shell of the LoraAdapter controller: observe → plan → apply, for one adapter at a time.

observe: the adapter, its training (trainingRef), the target Deployment, every adapter targeting it, the
         Deployment's pods and what each pod's agent holds;
plan:    the Deployment patch, the preflight, the placement of every adapter on the pods, the status
         (pure modules next to this one);
apply:   patch the Deployment when something must change, PUT/DELETE on the agents, the evaluation Job,
         the status.

Pods are watched too: a pod that becomes ready (a restart, a new replica, a rollout) triggers a reconcile
of every adapter targeting its Deployment, which tells the pod's agent what it must hold.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf

from loraops.agent.client import AgentClient, AgentError
from loraops.agent.models import ProbeSpec, SignatureCheck
from loraops.api.adapter import LoraAdapterSpec, LoraAdapterStatus
from loraops.api.common import API_VERSION
from loraops.api.kinds import ADAPTER_ROUTE, LORA_ADAPTER, LORA_TRAINING
from loraops.config import AGENT_URL_ANNOTATION, SERVICE_URL_ANNOTATION, OperatorConfig
from loraops.kube.client import CONFIGMAPS, DEPLOYMENTS, JOBS, PODS, SERVICES, KubeClient, Resource
from loraops.kube.handlers import accepted_spec, kind_resource, register_reconciler, write_status
from loraops.kube.metrics import instrumented
from loraops.kube.objects import Owner

from . import evaluation as gate
from .deployment import AGENT_CONTAINER, AGENT_LABEL, DeploymentPlan, plan_deployment
from .fleet import Member, members, needs, wants
from .placement import Assignment, Outcome, PodView, placements, plan_actions, plan_placement, served_name
from .preflight import Source, Verdict, preflight
from .routes import routes_sending_to
from .signature import agent_check, policy_refusal
from .signature import config_map_name as signature_config_map
from .status import Event, Observation, current_loads, plan_deletion_status, plan_status

Obj = dict[str, Any]
ADAPTERS = kind_resource(LORA_ADAPTER)
TRAININGS = kind_resource(LORA_TRAINING)
ROUTES = kind_resource(ADAPTER_ROUTE)
TRAINING_RESOURCE = (LORA_TRAINING.group, LORA_TRAINING.version, LORA_TRAINING.plural)
RESOURCES: dict[str, Resource] = {"ConfigMap": CONFIGMAPS, "Job": JOBS}


# ---- small pure helpers of the shell ----


def pod_ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def has_agent(pod: Obj) -> bool:
    return any(c.get("name") == AGENT_CONTAINER for c in (pod.get("spec") or {}).get("containers") or [])


def agent_url(pod: Obj, config: OperatorConfig) -> str | None:
    """Where the pod's agent listens: its pod IP and the agent port. In dev mode and tests (and only when the
    config allows it) the pod's `loraops.io/agent-url` annotation points at a local agent instead."""
    if url := config.dev_url(pod, AGENT_URL_ANNOTATION):
        return url.rstrip("/")
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{config.agent_port}" if ip else None


def selector(deployment: Obj) -> str | None:
    """The Deployment's matchLabels as a label selector (matchExpressions narrow it further; the pods of a
    Deployment always carry its matchLabels, so this finds all of them)."""
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None


def selects(deployment: Obj, labels: dict[str, str]) -> bool:
    wanted = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def service_url(services: list[Obj], deployment: Obj, namespace: str, config: OperatorConfig) -> str | None:
    """The Service in front of the Deployment's pods (its selector matches the pod template's labels)."""
    labels = (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    for service in sorted(services, key=lambda s: s["metadata"]["name"]):
        spec = service.get("spec") or {}
        chosen = spec.get("selector") or {}
        if not chosen or any(labels.get(k) != v for k, v in chosen.items()):
            continue
        if url := config.dev_url(service, SERVICE_URL_ANNOTATION):
            return url
        ports = spec.get("ports") or []
        port = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else {"port": 80})
        return f"http://{service['metadata']['name']}.{namespace}.svc:{port.get('port', 80)}"
    return None


def agent_probe(spec: LoraAdapterSpec) -> ProbeSpec | None:
    """The agents' effect probe from `spec.probe`; None (the agent's defaults) when unset, so the PUT body stays
    acceptable to agents that predate the probe."""
    if spec.probe is None:
        return None
    return ProbeSpec(prompts=spec.probe.prompts, max_tokens=spec.probe.max_tokens, enabled=spec.probe.enabled)


def _now() -> datetime:
    return datetime.now(UTC)


class AdapterController:
    def __init__(self, client: KubeClient, config: OperatorConfig) -> None:
        self.client = client
        self.config = config
        self.agent_url: Callable[[Obj, OperatorConfig], str | None] = agent_url
        """Overridable: how a pod's agent is reached."""
        self.token = (
            pathlib.Path(config.agent_token_file).read_text(encoding="utf-8").strip()
            if config.agent_token_file
            else None
        )
        self._session: aiohttp.ClientSession | None = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pods_seen: dict[str, tuple[bool, str | None]] = {}
        self._trainings_seen: dict[str, tuple[str, str]] = {}

    # ---- plumbing ----

    def _lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((kind, f"{namespace}/{name}"), asyncio.Lock())

    def agent(self, url: str) -> AgentClient:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return AgentClient(url, token=self.token, timeout=self.config.agent_timeout_seconds, session=self._session)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ---- reconcile ----

    async def reconcile(self, body: Any, logger: kopf.Logger) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        async with self._lock("adapter", namespace, name):
            # Re-read: reconciles also start from pod events, and kopf's copy may predate our last status write.
            fresh = await self.client.aget(ADAPTERS, namespace, name)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            await self._reconcile(fresh, logger)

    async def _reconcile(self, body: Obj, logger: kopf.Logger) -> None:
        meta = body["metadata"]
        namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
        spec = await accepted_spec(self.client, LORA_ADAPTER, body)
        if not isinstance(spec, LoraAdapterSpec):
            return
        target = spec.serving.deployment
        deployment, adapters = await asyncio.gather(
            self.client.aget(DEPLOYMENTS, namespace, target), self.client.aitems(ADAPTERS, namespace)
        )
        needs_trainings = any(((a.get("spec") or {}).get("source") or {}).get("trainingRef") for a in adapters)
        trainings = (
            {t["metadata"]["name"]: t for t in await self.client.aitems(TRAININGS, namespace)}
            if needs_trainings
            else {}
        )
        group = members(adapters, trainings, target)
        me = next((m for m in group if m.name == name), None)
        if me is None:  # the listing lags behind the object just read
            me = members([body], trainings, target)[0]
            group.append(me)

        plan: DeploymentPlan | None = None
        changes: list[str] = []
        if deployment is not None:
            plan = plan_deployment(
                deployment, spec.serving.container, needs(group, deployment, self.config), self.config
            )
            if plan.patch is not None:
                deployment, plan, changes = await self.patch_deployment(namespace, target, group, logger)
        # Signatures (issue 9): the policy and the agents' request. A refusal stands in for the source, so the
        # adapter is placed nowhere and what the pods still hold of it is unloaded.
        check = await self.signature_check(namespace, spec) if isinstance(me.source, Source) else None
        refusal = policy_refusal(spec, namespace, self.config) or (check if isinstance(check, Verdict) else None)
        signature = check if isinstance(check, SignatureCheck) else None
        obs = Observation(spec=spec, source=refusal or me.source, deployment_changes=changes)
        pods: list[PodView] = []
        if isinstance(obs.source, Source):
            obs.compatible = preflight(spec, obs.source, deployment, plan, self.config)
        if deployment is not None and plan is not None and plan.limits is not None:
            pods = await self.observe_pods(namespace, deployment)
            plan_all = plan_placement(wants(group, deployment, plan, self.config), pods, plan.limits.max_cpu_loras)
            obs.assignment = plan_all.get(name, Assignment((), 0)) if refusal is None else Assignment((), 0)
            digest = obs.source.digest if isinstance(obs.source, Source) else None
            outcomes = await self.apply_placement(me, obs.assignment, pods, digest, signature)
            obs.placements = placements(name, digest, obs.assignment, pods, outcomes)
        if spec.evaluation is not None:
            obs.evaluation, obs.evaluation_result = await self.evaluation_step(body, spec, me, obs, deployment)
        desired, events = plan_status(body.get("status"), generation, name, obs, _now())
        self.emit(body, events)
        await write_status(self.client, LORA_ADAPTER, body, desired)

    def emit(self, body: Obj, events: list[Event]) -> None:
        for event in events:
            kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message[:1024])

    async def patch_deployment(
        self, namespace: str, target: str, group: list[Member], logger: kopf.Logger
    ) -> tuple[Obj | None, DeploymentPlan | None, list[str]]:
        """Re-read and re-plan under a per-Deployment lock, then patch: concurrent reconciles of adapters
        that share the Deployment patch it once, and a stale read fails with 409 instead of losing an edit."""
        async with self._lock("deployment", namespace, target):
            deployment = await self.client.aget(DEPLOYMENTS, namespace, target)
            if deployment is None:
                return None, None, []
            container = group[0].spec.serving.container if group else None
            plan = plan_deployment(deployment, container, needs(group, deployment, self.config), self.config)
            if plan.patch is None:
                return deployment, plan, []
            logger.info("patching Deployment %s/%s: %s", namespace, target, ", ".join(plan.changes))
            deployment = await self.client.apatch(DEPLOYMENTS, namespace, target, plan.patch)
            return deployment, plan, plan.changes

    async def observe_pods(self, namespace: str, deployment: Obj) -> list[PodView]:
        chosen = selector(deployment)
        if chosen is None:
            return []
        pods = [p for p in await self.client.aitems(PODS, namespace, chosen) if has_agent(p)]

        async def view(pod: Obj) -> PodView:
            name, ready, url = pod["metadata"]["name"], pod_ready(pod), self.agent_url(pod, self.config)
            if not ready or url is None:
                return PodView(name, ready, url)
            try:
                records = await self.agent(url).list()
            except AgentError as error:
                return PodView(name, ready, url, None, f"{error.reason}: {error.message}")
            return PodView(name, ready, url, {r.name: r for r in records})

        return list(await asyncio.gather(*(view(p) for p in pods)))

    async def signature_check(self, namespace: str, spec: LoraAdapterSpec) -> SignatureCheck | Verdict | None:
        """What the agents verify the signature with (a ConfigMap's PEM is read here), or why it cannot be."""
        if spec.source.signature is None:
            return None
        config_map_ref = signature_config_map(spec.source.signature)
        config_map = await self.client.aget(CONFIGMAPS, namespace, config_map_ref) if config_map_ref else None
        return agent_check(spec.source.signature, config_map)

    async def apply_placement(
        self,
        me: Member,
        assignment: Assignment,
        pods: list[PodView],
        digest: str | None,
        signature: SignatureCheck | None = None,
    ) -> dict[str, Outcome]:
        actions = plan_actions(me.name, digest, assignment, pods)
        if signature is not None:
            # Held before a signature was asked for: the agent must check the installed bytes now.
            for pod in pods:
                record = (pod.records or {}).get(me.name)
                unchecked = record is not None and record.state == "Loaded" and record.signature_digest is None
                if pod.name in assignment.pods and unchecked and pod.name not in actions.put:
                    actions.put.append(pod.name)
        urls = {p.name: p.url for p in pods}
        source = me.source
        probe = agent_probe(me.spec)

        async def put(pod: str) -> tuple[str, Outcome]:
            assert isinstance(source, Source) and urls[pod]
            try:
                record = await self.agent(str(urls[pod])).put(
                    me.name,
                    source.uri,
                    source.digest,
                    served_name=served_name(me.name, source.digest),
                    credentials_secret=source.credentials_secret,
                    convert_pickle=me.spec.source.convert_pickle,
                    probe=probe,
                    signature=signature,
                )
            except AgentError as error:
                return pod, Outcome(error.record if error.status == 503 else None, error.reason, error.message)
            return pod, Outcome(record)

        async def delete(pod: str) -> tuple[str, Outcome]:
            try:
                await self.agent(str(urls[pod])).delete(me.name)
            except AgentError as error:
                return pod, Outcome(None, error.reason, error.message)
            return pod, Outcome()

        calls = [put(p) for p in actions.put] + [delete(p) for p in actions.delete]
        return dict(await asyncio.gather(*calls))

    # ---- evaluation gate ----

    async def evaluation_step(
        self, body: Obj, spec: LoraAdapterSpec, me: Member, obs: Observation, deployment: Obj | None
    ) -> tuple[Verdict, Any]:
        evaluation = spec.evaluation
        assert evaluation is not None
        current = LoraAdapterStatus.model_validate(body.get("status") or {}).evaluation
        loaded = (
            obs.assignment is not None
            and obs.assignment.wanted > 0
            and all(any(p.pod == pod and p.state == "Loaded" for p in obs.placements) for pod in obs.assignment.pods)
            and len(obs.assignment.pods) >= obs.assignment.wanted
        )
        if not isinstance(me.source, Source) or deployment is None or not loaded:
            return Verdict("Unknown", "WaitingForLoad", "the evaluation runs once the adapter is loaded"), current
        if any(p.effective is False for p in current_loads(obs)):
            # An adapter that answers like the base model cannot pass a gate worth running: save the Job.
            return Verdict("Unknown", "WaitingForEffect", "not evaluated: see condition Effective (NoEffect)"), current
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        config_map = None
        if evaluation.golden.config_map_ref is not None:
            config_map = await self.client.aget(CONFIGMAPS, namespace, evaluation.golden.config_map_ref.name)
        golden = gate.golden_from(evaluation, config_map)
        if isinstance(golden, str):
            return Verdict("False", "GoldenSetUnavailable", golden), current
        served = next((p.served_name for p in obs.placements if p.served_name), None) or served_name(
            name, me.source.digest
        )
        key = gate.gate_key(me.source.digest, golden, evaluation, spec.base_model, served)
        job_name = gate.job_name(name, key)
        if current is not None and current.job_name == job_name:
            passed, reason, message = gate.decide(current, evaluation)  # thresholds may have changed since
            return Verdict("True" if passed else "False", reason, message), current.model_copy(
                update={"passed": passed}
            )
        job = await self.client.aget(JOBS, namespace, job_name)
        if job is None:
            endpoint = service_url(await self.client.aitems(SERVICES, namespace), deployment, namespace, self.config)
            if endpoint is None:
                message = (
                    f"no Service selects the pods of Deployment {spec.serving.deployment}: the evaluation queries one"
                )
                return Verdict("False", "ServiceNotFound", message), current
            owner = Owner(API_VERSION, LORA_ADAPTER.kind, name, namespace, body["metadata"]["uid"])
            for obj in gate.render_evaluation(
                owner, evaluation, golden, key, endpoint, spec.base_model, served, self.config
            ):
                await self.client.acreate_if_absent(RESOURCES[obj["kind"]], namespace, obj)  # 409: an earlier attempt
            kopf.event(
                cast(kopf.Body, body),
                type="Normal",
                reason="EvaluationStarted",
                message=f"evaluation Job {job_name} against {endpoint}",
            )
            return Verdict("Unknown", "Evaluating", f"evaluation Job {job_name} started"), current
        pods = await self.client.aitems(PODS, namespace, f"job-name={job_name}")
        outcome = gate.job_outcome(job, pods)
        if outcome.state == "Running":
            return Verdict("Unknown", "Evaluating", f"evaluation Job {job_name} is running"), current
        if outcome.state == "Failed" or outcome.summary is None:
            message = f"evaluation Job {job_name} failed: {outcome.message} (delete the Job to run it again)"
            return Verdict("False", "EvaluationFailed", message), current
        try:
            result = gate.result_from(outcome.summary, evaluation, me.source.digest, golden, job_name, _now())
        except (KeyError, TypeError, ValueError) as error:
            return Verdict("False", "EvaluationFailed", f"unreadable evaluation summary: {error!r}"), current
        passed, reason, message = gate.decide(result, evaluation)
        return Verdict("True" if passed else "False", reason, message), result

    # ---- deletion ----

    async def finalize(self, body: kopf.Body, logger: kopf.Logger) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        routes = routes_sending_to(name, await self.client.aitems(ROUTES, namespace))
        fresh = await self.client.aget(ADAPTERS, namespace, name) or dict(body)
        desired, events = plan_deletion_status(fresh.get("status"), meta.get("generation"), routes, _now())
        self.emit(fresh, events)
        await write_status(self.client, LORA_ADAPTER, fresh, desired)
        if routes:
            raise kopf.TemporaryError(f"routed by {', '.join(routes)}", delay=max(self.config.retry_seconds, 1.0))
        target = ((body.get("spec") or {}).get("serving") or {}).get("deployment")
        deployment = await self.client.aget(DEPLOYMENTS, namespace, target) if target else None
        if deployment is None:
            return
        failures = []
        for pod in await self.observe_pods(namespace, deployment):
            if pod.url is None or (pod.records is not None and name not in pod.records):
                continue
            if pod.records is None and not pod.ready:
                continue  # a pod that is not ready and does not answer loses its adapters when it restarts
            try:
                await self.agent(pod.url).delete(name)
            except AgentError as error:
                failures.append(f"{pod.name}: {error.reason}: {error.message}")
        if failures:
            raise kopf.TemporaryError(
                "unload failed on " + "; ".join(failures), delay=max(self.config.retry_seconds, 1.0)
            )
        # The slots are counted free only now that the agents dropped the adapter: adapters of the Deployment
        # left short by capacity are placed at once rather than at the next resync.
        others = [
            a for a in await self.client.aitems(ADAPTERS, namespace)
            if ((a.get("spec") or {}).get("serving") or {}).get("deployment") == target
            and not a["metadata"].get("deletionTimestamp")
            and a["metadata"]["name"] != name
        ]  # fmt: skip
        await asyncio.gather(*(self.reconcile(a, logger) for a in others))

    # ---- pods ----

    async def pod_event(self, event: Obj, namespace: str, logger: kopf.Logger) -> None:
        pod = event.get("object") or {}
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        key = (pod_ready(pod) and event.get("type") != "DELETED", self.agent_url(pod, self.config))
        if self._pods_seen.get(uid) == key:
            return  # only readiness and address matter; the rest of a pod's updates change nothing here
        self._pods_seen[uid] = key
        if event.get("type") == "DELETED":
            self._pods_seen.pop(uid, None)
        labels = meta.get("labels") or {}
        deployments = [d for d in await self.client.aitems(DEPLOYMENTS, namespace) if selects(d, labels)]
        names = {d["metadata"]["name"] for d in deployments}
        adapters = [
            a for a in await self.client.aitems(ADAPTERS, namespace)
            if ((a.get("spec") or {}).get("serving") or {}).get("deployment") in names
        ]  # fmt: skip
        await asyncio.gather(
            *(self.reconcile(a, logger) for a in adapters if not a["metadata"].get("deletionTimestamp"))
        )
        if key[0] and key[1]:
            await self.sweep(str(key[1]), {a["metadata"]["name"] for a in adapters}, logger)

    async def training_event(self, event: Obj, namespace: str, logger: kopf.Logger) -> None:
        """A training that succeeds (or fails) resolves the source of the adapters released from it."""
        training = event.get("object") or {}
        meta = training.get("metadata") or {}
        status = training.get("status") or {}
        key = (str(status.get("phase")), str((status.get("output") or {}).get("sha256")))
        uid = f"training/{meta.get('uid')}"
        if self._trainings_seen.get(uid) == key:
            return
        self._trainings_seen[uid] = key
        adapters = [
            a for a in await self.client.aitems(ADAPTERS, namespace)
            if (((a.get("spec") or {}).get("source") or {}).get("trainingRef") or {}).get("name") == meta.get("name")
        ]  # fmt: skip
        await asyncio.gather(*(self.reconcile(a, logger) for a in adapters))

    async def sweep(self, url: str, known: set[str], logger: kopf.Logger) -> None:
        """Unload what no LoraAdapter of this Deployment wants any more (e.g. deleted while the operator was
        down, its finalizer removed by hand): nothing stays loaded that no one wants."""
        try:
            records = await self.agent(url).list()
            for record in records:
                if record.name not in known:
                    logger.info("unloading orphan adapter %s from %s", record.name, url)
                    await self.agent(url).delete(record.name)
        except AgentError as error:
            logger.debug("sweep of %s skipped: %s", url, error)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, client: KubeClient) -> None:
    controller = AdapterController(client, config)
    register_reconciler(registry, LORA_ADAPTER, controller.reconcile, config, finalize=controller.finalize)

    @instrumented(LORA_ADAPTER.kind)
    async def follow_pod(*, event: kopf.RawEvent, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
        if namespace:
            await controller.pod_event(dict(event), namespace, logger)

    kopf.on.event("", "v1", "pods", registry=registry, labels={AGENT_LABEL: "true"}, id="follow-vllm-pod")(follow_pod)

    @instrumented(LORA_ADAPTER.kind)
    async def follow_training(*, event: kopf.RawEvent, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
        if namespace:
            await controller.training_event(dict(event), namespace, logger)

    kopf.on.event(*TRAINING_RESOURCE, registry=registry, id="follow-training")(follow_training)

    @kopf.on.startup(registry=registry, id="adapter-executor")
    async def executor(**_: Any) -> None:
        # The API client blocks in threads (asyncio.to_thread); the default pool (cores + 4) makes 50 adapters
        # applied at once queue behind a handful of calls on a small node.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=config.api_threads, thread_name_prefix="kube")
        )

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await controller.close()
