"""Everything of loraops on one machine, on loopback: the fake Kubernetes API, the real operator (all three
controllers), the local Job runner (real trainer and evaluation subprocesses), a real vLLM CPU server with a
tiny model generated on first run, the real agent in front of it (one "pod" of the Deployment `tiny-vllm`),
the real router, and a chaos proxy between the router and the pod (to break an adapter on purpose).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loraops.adapters.deployment import AGENT_CONTAINER, vllm_container
from loraops.config import SERVICE_URL_ANNOTATION, VLLM_URL_ANNOTATION, OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.chaos import ChaosProxy
from loraops.devmode.fakevllm import LocalReplicas, pod_from_template, vllm_deployment
from loraops.devmode.jobrunner import LocalJobRunner
from loraops.devmode.kopfrunner import OperatorThread
from loraops.devmode.vllm import VllmServer, free_port, start_vllm
from loraops.runtime import build_registry

log = logging.getLogger(__name__)
NAMESPACE = "team-a"
DEPLOYMENT = "tiny-vllm"
POD = "tiny-vllm-0"
SERVED_BASE = "tiny-llama"


def repo_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[3]


def tiny_model(cache: pathlib.Path) -> pathlib.Path:
    """The tiny Llama, built once (seconds) and reused by later runs."""
    folder = cache / "tiny-llama"
    if not (folder / "config.json").exists():
        from loraops_trainer.testing import build_tiny_llama

        shutil.rmtree(folder, ignore_errors=True)
        build_tiny_llama(folder)
    return folder


@dataclass
class DevWorld:
    state: pathlib.Path
    api: FakeKubeApi
    runner: LocalJobRunner
    vllm: VllmServer
    replicas: LocalReplicas
    chaos: ChaosProxy
    router_url: str
    kubeconfig: pathlib.Path

    def pvc(self, claim: str) -> pathlib.Path:
        return self.runner.pvc_path(claim)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        binary = pathlib.Path(sys.executable).parent / "kubectl"
        command = [str(binary), "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.state / "kube-cache")]
        result = subprocess.run([*command, *args], capture_output=True, text=True, input=stdin, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout


def _deployment(model: pathlib.Path, port: int) -> dict[str, Any]:
    args = ["--model", str(model), "--served-model-name", SERVED_BASE, "--port", str(port), "--enable-lora",
            "--max-loras", "4", "--max-lora-rank", "16"]  # fmt: skip
    return vllm_deployment(DEPLOYMENT, args, image="vllm/vllm-openai-cpu")


def _play_replicaset(world: DevWorld, agent_url: str, stop: threading.Event) -> None:
    """The pod of the Deployment, (re)created from its template once the operator has added the agent."""
    while not stop.wait(0.3):
        with contextlib.suppress(Exception):
            deployment = world.api.get("deployments", NAMESPACE, DEPLOYMENT)
            patched = deployment is not None and vllm_container(deployment, AGENT_CONTAINER) is not None
            if deployment and patched and world.api.get("pods", NAMESPACE, POD) is None:
                pod = pod_from_template(deployment, POD, agent_url, "127.0.0.1")
                pod["metadata"]["annotations"][VLLM_URL_ANNOTATION] = world.chaos.url
                world.api.create("pods", pod, NAMESPACE)


@contextlib.contextmanager
def dev_world(state: pathlib.Path, *, api_port: int = 0, quiet: bool = True) -> Iterator[DevWorld]:
    """Start everything; stop everything (no process left behind) when the block ends."""
    state.mkdir(parents=True, exist_ok=True)
    cache = state.parent / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    with stack:
        api = stack.enter_context(FakeKubeApi(crd_dirs=[repo_root() / "crds"], port=api_port, history_limit=3))
        api.ensure_namespace(NAMESPACE)
        kubeconfig = api.write_kubeconfig(state / "kubeconfig", namespace=NAMESPACE)
        pod_dir = state / "replicas" / POD
        runner = stack.enter_context(LocalJobRunner(api, pod_dir, [NAMESPACE]))
        model = runner.pvc_path("models") / "tiny-llama"
        if not model.exists():
            shutil.copytree(tiny_model(cache), model)
        vllm = start_vllm(model, served_name=SERVED_BASE, max_loras=4, max_lora_rank=16)
        stack.callback(vllm.stop)
        chaos = ChaosProxy(vllm.url).start()
        stack.callback(chaos.stop)
        replicas = stack.enter_context(LocalReplicas(state / "replicas", base_model=SERVED_BASE, watch_interval=1.0))
        agent = replicas.add(POD, vllm_url=vllm.url)
        api.create("deployments", _deployment(model, vllm.port), NAMESPACE)
        service = {
            "metadata": {"name": DEPLOYMENT, "annotations": {SERVICE_URL_ANNOTATION: vllm.url}},
            "spec": {"selector": {"app": DEPLOYMENT}, "ports": [{"name": "http", "port": 8000}]},
        }
        api.create("services", service, NAMESPACE)
        router_port = free_port()
        router_log = (state / "router.log").open("w")
        stack.callback(router_log.close)
        router = subprocess.Popen(
            [sys.executable, "-m", "loraops.cli", "router", "--kube", "--kubeconfig", str(kubeconfig),
             "-n", NAMESPACE, "--host", "127.0.0.1", "--port", str(router_port)],
            stdout=router_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(_terminate, router)
        config = OperatorConfig(
            namespaces=[NAMESPACE], server=api.url, agent_url_annotation=True, post_events=True,
            liveness_port=None, metrics_port=None, resync_seconds=30, retry_seconds=1, progress_seconds=1,
            rollout_tick_seconds=0.5, router_metrics_urls=[f"http://127.0.0.1:{router_port}/metrics"],
        )  # fmt: skip
        stack.enter_context(
            OperatorThread(api.url, registry=build_registry(config, login=False), namespaces=[NAMESPACE])
        )
        world = DevWorld(state, api, runner, vllm, replicas, chaos, f"http://127.0.0.1:{router_port}", kubeconfig)
        stop = threading.Event()
        replicaset = threading.Thread(target=_play_replicaset, args=(world, agent.agent_url, stop), daemon=True)
        replicaset.start()
        stack.callback(replicaset.join, 5)
        stack.callback(stop.set)
        _wait_http(f"{world.router_url}/healthz", 30)
        yield world


def _terminate(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def up(state: pathlib.Path, api_port: int = 0) -> int:
    """`loraops dev up`: everything in the foreground until Ctrl-C or `loraops dev down`."""
    import os
    import signal

    logging.basicConfig(level=logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pidfile = state / "dev.pid"
    with dev_world(state / "up", api_port=api_port) as world:
        pidfile.write_text(str(os.getpid()))
        kubectl = f"kubectl --kubeconfig {world.kubeconfig} --cache-dir {world.state}/kube-cache"
        print(f"fake Kubernetes API {world.api.url}\nvLLM {world.vllm.url}\nrouter {world.router_url}")
        print(f"PVC claims under {world.runner.workdir / 'pvc'} (models/tiny-llama is there)")
        print(f"try: {kubectl} apply --validate=false -f examples/demo/\nstop with Ctrl-C or `loraops dev down`")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    pidfile.unlink(missing_ok=True)
    return 0


def down(state: pathlib.Path) -> int:
    import os
    import signal

    pidfile = state / "dev.pid"
    if not pidfile.exists():
        print("no dev environment is running")
        return 0
    pid = int(pidfile.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    pidfile.unlink(missing_ok=True)
    print(f"stopped the dev environment (pid {pid})")
    return 0
