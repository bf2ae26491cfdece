"""Rollback speed: from the first failing answer of a broken candidate to the router sending it nothing.

The real operator (routing controller, kopf on the fake API), a real `loraops router --kube` process and a
fake vLLM whose candidate adapter answers 500 for 30% of requests; clients send traffic throughout. Reported:
the analysis interval, seconds from the candidate's first failing answer to its last request (weight 0 in
the router), and client-visible failures (the router answers from the base model meanwhile).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import requests

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kopfrunner import OperatorThread
from loraops.devmode.vllm import free_port
from loraops.runtime import build_registry
from tests.rollout.test_route_controller import Clients, UpstreamThread, route_manifest, seed_adapter, status
from tests.router.fakes import Behaviour
from tests.support import wait_for

REPO = pathlib.Path(__file__).resolve().parent.parent
NAMESPACE = "team-a"
INTERVAL_S = 5.0


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, FakeKubeApi(crd_dirs=[REPO / "crds"]) as api, UpstreamThread() as up:
        api.ensure_namespace(NAMESPACE)
        kubeconfig = api.write_kubeconfig(pathlib.Path(tmp) / "kubeconfig", namespace=NAMESPACE)
        port = free_port()
        router = subprocess.Popen(
            [sys.executable, "-m", "loraops.cli", "router", "--kube", "--kubeconfig", str(kubeconfig), "-n", NAMESPACE,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        config = OperatorConfig(
            namespaces=[NAMESPACE], server=api.url, controllers=["routing"], liveness_port=None, metrics_port=None,
            retry_seconds=0.5, rollout_tick_seconds=0.5, router_metrics_urls=[f"http://127.0.0.1:{port}/metrics"],
            service_url_template="http://127.0.0.1:{port}",
        )  # fmt: skip
        try:
            wait_for(lambda: _up(port), timeout=30, message="router")
            with OperatorThread(api.url, registry=build_registry(config, login=False), namespaces=[NAMESPACE]):
                for name in ("v1", "v2"):
                    seed_adapter(api, name)
                manifest = route_manifest("v1", [{"weight": 20}, {"weight": 50}], up.port)
                manifest["spec"]["analysis"]["interval"] = f"{INTERVAL_S:g}s"
                api.create("adapterroutes", manifest, NAMESPACE)
                wait_for(lambda: status(api).get("stableAdapter") == "v1", timeout=30, message="v1 stable")
                failures: list[float] = []
                up.fake.behaviours["v2"] = Behaviour(fail_pattern=(3, 10))
                original = up.fake._answer

                async def timed(request: Any, body: dict[str, Any], model: str) -> Any:
                    response = await original(request, body, model)
                    if model == "v2":
                        failures.append(time.monotonic()) if response.status >= 500 else None
                        last_v2[0] = time.monotonic()
                    return response

                last_v2 = [0.0]
                up.fake._answer = timed  # type: ignore[method-assign]
                with Clients(f"http://127.0.0.1:{port}/v1/chat/completions") as clients:
                    api.patch("adapterroutes", NAMESPACE, "support-bot", {"spec": {"adapter": "v2"}})
                    wait_for(lambda: status(api).get("phase") == "RolledBack", timeout=120, message="rollback")
                    time.sleep(3)  # any request still routed to v2 would show up now
                breach_to_off = last_v2[0] - failures[0]
        finally:
            router.terminate()
            router.wait(20)
    return {
        "analysis_interval_s": INTERVAL_S,
        "breach_to_off_s": round(breach_to_off, 2),
        "target_s": INTERVAL_S + 1,
        "client_requests": clients.sent,
        "client_failures": clients.failed,
    }


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
