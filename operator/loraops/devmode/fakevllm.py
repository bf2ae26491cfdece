"""A fake vLLM (the runtime LoRA API only) and local "replicas" — a fake vLLM plus a real agent each — for
tests and benchmarks of the adapter controller without the real server.

`FakeVllm` answers as NOTES describe vLLM 0.32: load → 200 plain text, same name again → 400, missing path →
404, unload of an unknown name → 404; completions answer 404 for a model it does not serve. `LocalReplicas`
runs N pairs on a private event loop in a background thread and plays the ReplicaSet for the fake API:
it creates pod objects from the Deployment's template, pointing the operator at each pod's agent through the
`loraops.io/agent-url` annotation (honoured only with `OperatorConfig.agent_url_annotation`).
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from loraops.config import AGENT_URL_ANNOTATION
from loraops.devmode.kutil import now_rfc3339
from loraops.devmode.vllm import free_port

T = TypeVar("T")


@dataclass
class FakeVllm:
    """vLLM's runtime LoRA API as NOTES describe it (200 plain text, 400 name taken, 404 missing path, 500 on
    an injected failure), on a fixed port so it can be stopped and started again like a restarted server.

    Completions are deterministic: the base answers a fixed text with fixed logprobs; an adapter answers by
    its entry in `answers` — "base" (exactly like the base: what vLLM does for a B = 0 adapter), "logprobs"
    (same text, other logprobs) or "text" (the default: another text)."""

    base_model: str = "base"
    port: int = field(default_factory=free_port)
    root: str = "/models/base"
    """The base model's `root` in /v1/models (vLLM reports its --model path there)."""
    adapters: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_next_load: list[int] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    completions: list[dict[str, Any]] = field(default_factory=list)
    """Completion requests, apart from `calls` (the LoRA API) so probes do not clutter those."""
    fail_completions: int = 0
    """Answer this many next completions with 500."""
    healthy: bool = True
    unstable_base: bool = False
    """The base's text changes on every request (a server that is not batch-invariant under live traffic)."""
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def loads(self) -> list[dict[str, Any]]:
        return [body for path, body in self.calls if path == "load"]

    def app(self) -> web.Application:
        async def health(_: web.Request) -> web.Response:
            return web.Response(status=200 if self.healthy else 503)

        async def models(_: web.Request) -> web.Response:
            data = [{"id": self.base_model, "root": self.root, "parent": None}]
            data += [{"id": name, "root": path, "parent": self.base_model} for name, path in self.adapters.items()]
            return web.json_response({"object": "list", "data": data})

        async def load(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(("load", body))
            if self.fail_next_load:
                return web.Response(status=self.fail_next_load.pop(0), text="injected failure")
            name, path = body["lora_name"], body["lora_path"]
            if name in self.adapters and not body.get("load_inplace"):
                return web.Response(status=400, text=f"The lora adapter '{name}' has already been loaded.")
            if not pathlib.Path(path, "adapter_config.json").is_file():
                return web.Response(status=404, text=f"No adapter found for {path}")
            self.adapters[name] = path
            return web.Response(status=200, text=f"Success: LoRA adapter '{name}' added successfully.")

        async def unload(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(("unload", body))
            if self.adapters.pop(body["lora_name"], None) is None:
                return web.Response(status=404, text="not found")
            return web.Response(status=200, text="Success")

        async def completions(request: web.Request) -> web.Response:
            body = await request.json()
            self.completions.append(body)
            model = body.get("model")
            if model != self.base_model and model not in self.adapters:
                error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "param": "model"}
                return web.json_response({"error": error}, status=404)
            if self.fail_completions:
                self.fail_completions -= 1
                return web.json_response({"error": {"message": "injected"}}, status=500)
            mode = "base" if model == self.base_model else self.answers.get(model, "text")
            text = f" answer to {str(body.get('prompt', ''))[:12]!r}" + ("" if mode != "text" else f" from {model}")
            if model == self.base_model and self.unstable_base:
                text += f" #{len(self.completions)}"
            logprobs = [-0.25, -1.5, -0.125] if mode != "logprobs" else [-0.25, -1.25, -0.125]
            choice = {"index": 0, "text": text, "logprobs": {"token_logprobs": logprobs}}
            return web.json_response({"model": model, "choices": [choice]})

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/load_lora_adapter", load)
        app.router.add_post("/v1/unload_lora_adapter", unload)
        app.router.add_post("/v1/completions", completions)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> None:
        """A restarted vLLM: same address, no runtime adapters."""
        await self.stop()
        self.adapters.clear()
        await self.start()


@dataclass
class Replica:
    """One "pod": a vLLM (fake, or a real server's URL) and a real agent in front of it."""

    pod: str
    agent_url: str
    vllm: FakeVllm | None
    workdir: pathlib.Path
    _runner: web.AppRunner | None = None


class LocalReplicas:
    """Replicas on a private event loop in a background thread (the operator runs on its own loop)."""

    def __init__(
        self,
        workdir: pathlib.Path,
        *,
        base_model: str = "base",
        watch_interval: float = 0.2,
        credentials_dir: pathlib.Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.credentials_dir = credentials_dir
        """Where the agents find mounted Secrets (`<dir>/<secret>/<KEY>`), as the kubelet would mount them."""
        self.base_model = base_model
        self.watch_interval = watch_interval
        self.replicas: dict[str, Replica] = {}
        self._loop = asyncio.new_event_loop()
        # Each agent is its own process in a pod, with its own thread pool for downloads and hashing.
        self._loop.set_default_executor(ThreadPoolExecutor(max_workers=8 * 4, thread_name_prefix="replica"))
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-replicas", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add(self, pod: str, *, vllm_url: str | None = None) -> Replica:
        """Start an agent (and a fake vLLM unless `vllm_url` names a real one) for `pod`."""
        return self.run(self._add(pod, vllm_url))

    async def _add(self, pod: str, vllm_url: str | None) -> Replica:
        from loraops.agent.config import AgentConfig
        from loraops.agent.server import build_app
        from loraops.agent.service import Agent

        fake = None
        if vllm_url is None:
            fake = FakeVllm(base_model=self.base_model)
            await fake.start()
            vllm_url = fake.url
        workdir = self.workdir / pod
        config = AgentConfig(
            adapters_dir=workdir / "adapters",
            vllm_url=vllm_url,
            pvc_root=workdir / "pvc",
            watch_interval=self.watch_interval,
            vllm_timeout=30.0,
            credentials_dir=self.credentials_dir,
        )
        runner = web.AppRunner(build_app(Agent(config), watch=True), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        replica = Replica(pod, f"http://127.0.0.1:{port}", fake, workdir, runner)
        self.replicas[pod] = replica
        return replica

    def remove(self, pod: str) -> None:
        """Stop the pod's agent and its fake vLLM: the pod is gone with everything it held."""
        replica = self.replicas.pop(pod)
        self.run(self._remove(replica))

    async def _remove(self, replica: Replica) -> None:
        if replica._runner is not None:
            await replica._runner.cleanup()
        if replica.vllm is not None:
            await replica.vllm.stop()

    def stop(self) -> None:
        for pod in list(self.replicas):
            self.remove(pod)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> LocalReplicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def vllm_deployment(name: str, args: list[str], *, image: str, replicas: int = 1, **container: Any) -> dict[str, Any]:
    """A Deployment of one vLLM container (`app: <name>` labels), as a platform team would apply it;
    `container` adds fields to the container (e.g. `resources`)."""
    labels = {"app": name}
    vllm = {"name": "vllm", "image": image, "args": args, **container}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [vllm]}},
        },
    }


def pod_from_template(
    deployment: dict[str, Any], name: str, agent_url: str, ip: str, ready: bool = True
) -> dict[str, Any]:
    """The pod a ReplicaSet would create from the Deployment's current template, reported Running and Ready."""
    template = (deployment.get("spec") or {}).get("template") or {}
    metadata = template.get("metadata") or {}
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": dict(metadata.get("labels") or {}),
            "annotations": {**(metadata.get("annotations") or {}), AGENT_URL_ANNOTATION: agent_url},
        },
        "spec": template.get("spec") or {},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "startTime": now,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now}],
        },
    }
