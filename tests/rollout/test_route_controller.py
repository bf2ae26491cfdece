"""The AdapterRoute controller end to end on one machine: real kopf on the fake API, a real `loraops router`
process serving the routes from status (`--kube`), fake vLLM upstreams, and client traffic throughout."""

from __future__ import annotations

import asyncio
import pathlib
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kopfrunner import OperatorThread
from loraops.devmode.vllm import free_port
from loraops.runtime import build_registry
from tests.conftest import NAMESPACE
from tests.router.fakes import Behaviour, FakeUpstream
from tests.support import wait_for

pytestmark = pytest.mark.rollout

BASE = "meta-llama/Llama-3.1-8B-Instruct"


class UpstreamThread:
    """A fake vLLM in its own loop, answering every served name (and the base)."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> UpstreamThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def port(self) -> int:
        return int(self.fake.url.rsplit(":", 1)[1])


class Clients:
    """Client traffic through the router: many users and tenants, counting every non-200 answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = self.failed = 0
        self.by_adapter: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(3)]

    def _run(self, worker: int) -> None:
        session = requests.Session()
        rng = random.Random(worker)
        while not self._stop.is_set():
            tenant = rng.choice(["acme", "globex", "initech"])
            headers = {"X-Tenant-Id": tenant, "X-User-Id": f"user-{rng.randrange(500)}"}
            body = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            try:
                response = session.post(self.url, json=body, headers=headers, timeout=10)
                ok, answered = response.status_code == 200, response.headers.get("x-loraops-adapter", "?")
                detail = f"{response.status_code} {response.text[:200]}"
            except requests.RequestException as err:
                ok, answered, detail = False, "?", repr(err)
            self.sent += 1
            self.by_adapter[answered] = self.by_adapter.get(answered, 0) + 1
            if not ok:
                self.failed += 1
                self.failures.append(detail)
            time.sleep(0.01)

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(15)


def seed_adapter(api: FakeKubeApi, name: str, ready: bool = True) -> None:
    api.create(
        "loraadapters",
        {
            "apiVersion": "loraops.io/v1alpha1",
            "kind": "LoraAdapter",
            "metadata": {"name": name},
            "spec": {
                "baseModel": BASE,
                "source": {"uri": f"s3://adapters/{name}/", "sha256": "a" * 64},
                "release": {"version": "1.0.0"},
                "provenance": {"owner": "support-ml", "license": "apache-2.0"},
                "serving": {"deployment": "llama"},
            },
            "status": {"phase": "Ready" if ready else "Loading", "servedName": name},
        },
        NAMESPACE,
    )


def route_manifest(adapter: str, steps: list[dict[str, Any]], port: int) -> dict[str, Any]:
    return {
        "apiVersion": "loraops.io/v1alpha1",
        "kind": "AdapterRoute",
        "metadata": {"name": "support-bot"},
        "spec": {
            "model": "support-bot",
            "base": {"deployment": "llama", "service": "llama", "servedModel": BASE, "port": port},
            "adapter": adapter,
            "strategy": {"steps": steps},
            "analysis": {"interval": "2s", "minRequests": 5, "maxErrorRate": 0.05, "maxP95LatencyRatio": 50},
            "fallback": {"mode": "base", "timeoutSeconds": 5, "circuitBreaker": {"consecutiveFailures": 50}},
        },
    }


@pytest.fixture
def world(fake_api: FakeKubeApi, tmp_path: pathlib.Path) -> Iterator[dict[str, Any]]:
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    router_port = free_port()
    with UpstreamThread() as upstream:
        router = subprocess.Popen(
            [sys.executable, "-m", "loraops.cli", "router", "--kube", "--kubeconfig", str(kubeconfig),
             "-n", NAMESPACE, "--host", "127.0.0.1", "--port", str(router_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        config = OperatorConfig(
            namespaces=[NAMESPACE], server=fake_api.url, controllers=["routing"], post_events=True,
            liveness_port=None, metrics_port=None, retry_seconds=0.5, rollout_tick_seconds=0.3,
            router_metrics_urls=[f"http://127.0.0.1:{router_port}/metrics"],
            service_url_template="http://127.0.0.1:{port}",
        )  # fmt: skip

        def router_up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{router_port}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_for(router_up, timeout=30, message="the router answers /healthz")
            with OperatorThread(fake_api.url, registry=build_registry(config, login=False), namespaces=[NAMESPACE]):
                yield {"api": fake_api, "upstream": upstream, "router": f"http://127.0.0.1:{router_port}"}
        finally:
            router.terminate()
            router.wait(20)


def status(api: FakeKubeApi) -> dict[str, Any]:
    return (api.get("adapterroutes", NAMESPACE, "support-bot") or {}).get("status") or {}


def set_adapter(api: FakeKubeApi, adapter: str) -> None:
    api.patch("adapterroutes", NAMESPACE, "support-bot", {"spec": {"adapter": adapter}})


def router_serves(world: dict[str, Any], adapter: str) -> bool:
    body = {"model": "support-bot", "messages": [{"role": "user", "content": "x"}]}
    response = requests.post(
        f"{world['router']}/v1/chat/completions", json=body, headers={"X-User-Id": "probe"}, timeout=5
    )
    return response.status_code == 200 and response.headers.get("x-loraops-adapter") == adapter


def test_canary_walks_mirror_cohort_weights_and_promotes_then_a_broken_release_rolls_back(
    world: dict[str, Any],
) -> None:
    api, upstream = world["api"], world["upstream"]
    for name in ("v1", "v2", "v3"):
        seed_adapter(api, name)
    steps = [{"mirror": {"percent": 50}}, {"cohort": {"tenants": ["acme"]}}, {"weight": 10}, {"weight": 50}]
    api.create("adapterroutes", route_manifest("v1", steps, upstream.port), NAMESPACE)
    wait_for(lambda: status(api).get("stableAdapter") == "v1", message="v1 promoted first")
    wait_for(lambda: router_serves(world, "v1"), message="the router serves v1")
    with Clients(f"{world['router']}/v1/chat/completions") as clients:
        set_adapter(api, "v2")
        seen_steps: set[int] = set()

        def promoted() -> bool:
            current = status(api)
            if current.get("currentStep") is not None:
                seen_steps.add(current["currentStep"])
            return current.get("stableAdapter") == "v2" and current.get("phase") == "Healthy"

        wait_for(promoted, timeout=60, message="v2 promoted")
        assert seen_steps == {0, 1, 2, 3}, f"every step was taken: {seen_steps}"
        assert upstream.fake.count("v2") > 0 and clients.by_adapter.get("v2", 0) > 0

        # v3 is broken: 30% of its answers are 500s.
        upstream.fake.behaviours["v3"] = Behaviour(fail_pattern=(3, 10))
        set_adapter(api, "v3")
        rolled_back = wait_for(
            lambda: (s := status(api)).get("phase") == "RolledBack" and s, timeout=60, message="rollback"
        )
        assert rolled_back["stableAdapter"] == "v2" and rolled_back["rolledBackAdapter"] == "v3"
        assert rolled_back["lastAnalysis"]["decision"] == "Fail"
        assert "error rate" in " ".join(rolled_back["lastAnalysis"]["reasons"])
        default = rolled_back["traffic"]["entries"][-1]["backends"]
        assert [(b.get("adapter"), b["weight"]) for b in default] == [("v2", 100)]
        wait_for(lambda: router_serves(world, "v2"), message="router back on v2")
        time.sleep(1)
    assert clients.sent > 100
    assert clients.failed == 0, f"{clients.failed} client failures: {clients.failures[:3]}"
    events = [e for e in api.list("events", NAMESPACE) if e.get("involvedObject", {}).get("name") == "support-bot"]
    reasons = {e["reason"] for e in events}
    assert {"RolloutStarted", "StepAdvanced", "Promoted", "RolledBack"} <= reasons


def test_stable_deleted_degrades_to_base_and_returns(world: dict[str, Any]) -> None:
    api, upstream = world["api"], world["upstream"]
    seed_adapter(api, "v1")
    api.create("adapterroutes", route_manifest("v1", [], upstream.port), NAMESPACE)
    wait_for(lambda: status(api).get("phase") == "Healthy", message="Healthy")
    api.delete("loraadapters", NAMESPACE, "v1")
    degraded = wait_for(lambda: (s := status(api)).get("phase") == "Degraded" and s, message="Degraded")
    assert [b.get("adapter") for b in degraded["traffic"]["entries"][-1]["backends"]] == [None]
    wait_for(lambda: router_serves(world, "base"), message="router on base")
    seed_adapter(api, "v1")
    wait_for(lambda: status(api).get("phase") == "Healthy", message="Healthy again")
    wait_for(lambda: router_serves(world, "v1"), message="router back on v1")


def test_pause_waits_for_the_promote_annotation(world: dict[str, Any]) -> None:
    api, upstream = world["api"], world["upstream"]
    seed_adapter(api, "v1")
    seed_adapter(api, "v2")
    api.create("adapterroutes", route_manifest("v1", [{"pause": {}}, {"weight": 50}], upstream.port), NAMESPACE)
    wait_for(lambda: status(api).get("stableAdapter") == "v1", message="v1")
    set_adapter(api, "v2")
    wait_for(lambda: status(api).get("phase") == "Paused", message="Paused")
    time.sleep(1.0)
    assert status(api)["phase"] == "Paused" and status(api)["currentStep"] == 0
    api.patch("adapterroutes", NAMESPACE, "support-bot", {"metadata": {"annotations": {"loraops.io/promote": "true"}}})
    wait_for(lambda: status(api).get("currentStep") == 1, message="past the pause")

    def annotations() -> dict[str, str]:
        return api.get("adapterroutes", NAMESPACE, "support-bot")["metadata"].get("annotations") or {}

    # The annotation acts once: the controller removes it right after the status that moved past the pause.
    wait_for(lambda: "loraops.io/promote" not in annotations(), timeout=10, message="the promote annotation consumed")


def test_spec_change_mid_rollout_restarts_toward_the_new_target(world: dict[str, Any]) -> None:
    api, upstream = world["api"], world["upstream"]
    for name in ("v1", "v2", "v3"):
        seed_adapter(api, name)
    manifest = route_manifest("v1", [{"weight": 10}, {"pause": {}}], upstream.port)
    manifest["spec"]["analysis"]["minRequests"] = 0  # no client traffic in this test: an empty window passes
    api.create("adapterroutes", manifest, NAMESPACE)
    wait_for(lambda: status(api).get("stableAdapter") == "v1", message="v1")
    set_adapter(api, "v2")
    wait_for(lambda: status(api).get("phase") == "Paused", timeout=30, message="v2 paused at step 2")
    set_adapter(api, "v3")
    restarted = wait_for(
        lambda: (s := status(api)).get("canaryAdapter") == "v3" and s, timeout=30, message="restart toward v3"
    )
    assert restarted["stableAdapter"] == "v1" and restarted["currentStep"] == 0
    weights = {b.get("adapter"): b["weight"] for b in restarted["traffic"]["entries"][-1]["backends"]}
    assert weights == {"v1": 90, "v3": 10}, "v2 got no traffic once the spec moved on"
