"""`loraops dev demo`: the whole life of an adapter on one machine, narrated, ending with a summary.

train v1 and v2 (real trainer) → verify, load into vLLM, evaluate against the base model → route v1 →
canary to v2 (mirror, cohort, weights) under real client traffic → promote → release a broken v3 →
automatic rollback, with the base model answering meanwhile → summary (client failures must be 0).
Every stage checks what it claims and stops the demo (exit code 1) if it does not hold.
"""

from __future__ import annotations

import json
import logging
import pathlib
import random
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from loraops.devmode.world import NAMESPACE, DevWorld, dev_world, repo_root

EXAMPLES = repo_root() / "examples" / "demo"


class DemoFailed(RuntimeError):
    pass


def chat_request(url: str, tenant: str, user: str, content: str, *, max_tokens: int) -> urllib.request.Request:
    """One chat completion for route `support-bot` as tenant `tenant`, user `user` (the router's sticky key)."""
    body = {"model": "support-bot", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
    headers = {"content-type": "application/json", "X-Tenant-Id": tenant, "X-User-Id": user}
    return urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)


class Traffic:
    """Clients of three tenants through the router; every answer that is not a 200 is a failure."""

    def __init__(self, router: str, workers: int = 3) -> None:
        self.url = f"{router}/v1/chat/completions"
        self.sent = self.failed = 0
        self.by_adapter: dict[str, int] = {}
        self.fallbacks = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        while not self._stop.is_set():
            tenant = rng.choice(["acme", "globex", "initech"])
            question = f"what is the capital of {rng.choice(['france', 'italy', 'peru'])}?"
            request = chat_request(self.url, tenant, f"u{rng.randrange(300)}", question, max_tokens=6)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    adapter = response.headers.get("x-loraops-adapter", "?")
                    fallback = response.headers.get("x-loraops-fallback")
                    ok, detail = True, ""
            except urllib.error.HTTPError as err:
                ok, adapter, fallback, detail = False, "?", None, f"{err.code} {err.read()[:200]!r}"
            except OSError as err:
                ok, adapter, fallback, detail = False, "?", None, repr(err)
            with self._lock:
                self.sent += 1
                self.by_adapter[adapter] = self.by_adapter.get(adapter, 0) + 1
                self.fallbacks += fallback is not None
                if not ok:
                    self.failed += 1
                    self.failures.append(detail)
            time.sleep(0.02)

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(70)


class Demo:
    def __init__(self, world: DevWorld, headless: bool) -> None:
        self.world = world
        self.headless = headless
        self.timings: list[tuple[str, float]] = []
        self.notes: list[str] = []

    # --- narration ---
    def say(self, text: str) -> None:
        print(text, flush=True)

    def live(self, text: str) -> None:
        if self.headless or not sys.stdout.isatty():
            return
        print(f"\r\033[K  {text}", end="", flush=True)

    def stage(self, title: str, action: Callable[[], None]) -> None:
        self.say(f"\n== {title}")
        started = time.monotonic()
        action()
        if not self.headless and sys.stdout.isatty():
            print("\r\033[K", end="")
        elapsed = time.monotonic() - started
        self.timings.append((title, elapsed))
        self.say(f"   done in {elapsed:.1f}s")

    def get(self, resource: str, name: str) -> dict[str, Any]:
        return self.world.api.get(resource, NAMESPACE, name) or {}

    def status(self, resource: str, name: str) -> dict[str, Any]:
        return self.get(resource, name).get("status") or {}

    def wait(
        self, what: str, predicate: Callable[[], Any], timeout: float, show: Callable[[], str] | None = None
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if show is not None:
                self.live(show())
            time.sleep(0.25)
        raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    # --- stages ---
    def prepare(self) -> None:
        from loraops_trainer.testing import capital_rows, write_jsonl

        write_jsonl(self.world.pvc("data") / "capitals.jsonl", capital_rows("chat", 256))
        self.say(f"   fake Kubernetes API {self.world.api.url}, kubeconfig {self.world.kubeconfig}")
        self.say(f"   vLLM (CPU) {self.world.vllm.url} serving tiny-llama; router {self.world.router_url}")
        self.say(self.world.kubectl("apply", "--validate=false", "-f", str(EXAMPLES / "10-golden-set.yaml")).rstrip())

    def train(self) -> None:
        self.say(self.world.kubectl("apply", "--validate=false", "-f", str(EXAMPLES / "20-trainings.yaml")).rstrip())
        seen: dict[str, set[int]] = {"support-v1": set(), "support-v2": set()}

        def done() -> bool:
            statuses = {name: self.status("loratrainings", name) for name in seen}
            for name, status in statuses.items():
                if status.get("phase") == "Failed":
                    raise DemoFailed(f"training {name} failed: {status.get('message')}")
                percent = (status.get("progress") or {}).get("percent")
                if percent is not None and percent not in seen[name]:
                    seen[name].add(percent)
                    if self.headless:
                        self.say(f"   {name}: {percent:3d}%  loss {(status.get('progress') or {}).get('loss')}")
            return all(status.get("phase") == "Succeeded" for status in statuses.values())

        def bars() -> str:
            parts = []
            for name in seen:
                progress = self.status("loratrainings", name).get("progress") or {}
                percent = int(progress.get("percent") or 0)
                parts.append(f"{name} [{'#' * (percent // 5):<20}] {percent:3d}% loss {progress.get('loss', '-')}")
            return "   ".join(parts)

        self.wait("both trainings", done, 600, bars)
        print()
        self.say(self.world.kubectl("get", "lt").rstrip())
        for name in seen:
            output = self.status("loratrainings", name)["output"]
            self.say(
                f"   {name}: adapter {output['uri']} sha256 {output['sha256'][:16]}…  metrics {output.get('metrics')}"
            )

    def release(self) -> None:
        self.say(self.world.kubectl("apply", "--validate=false", "-f", str(EXAMPLES / "30-adapters.yaml")).rstrip())
        names = ["support-v1", "support-v2"]

        def ready() -> bool:
            statuses = {name: self.status("loraadapters", name) for name in names}
            for name, status in statuses.items():
                if status.get("phase") == "Failed":
                    raise DemoFailed(f"adapter {name} failed: {status.get('message')}")
            return all(status.get("phase") == "Ready" for status in statuses.values())

        def show() -> str:
            return "   ".join(f"{n}: {self.status('loraadapters', n).get('phase', '-')}" for n in names)

        self.wait("both adapters Ready (verified, loaded, evaluated)", ready, 600, show)
        self.say(self.world.kubectl("get", "la").rstrip())
        for name in names:
            evaluation = self.status("loraadapters", name).get("evaluation") or {}
            self.say(
                f"   {name}: {evaluation.get('metric')} base {evaluation.get('baseScore')} → adapter "
                f"{evaluation.get('adapterScore')}  Δ {evaluation.get('delta')} "
                f"(95% CI {evaluation.get('ciLow')}..{evaluation.get('ciHigh')}, {evaluation.get('samples')} samples)"
            )

    def route_v1(self) -> None:
        self.say(self.world.kubectl("apply", "--validate=false", "-f", str(EXAMPLES / "40-route.yaml")).rstrip())
        self.wait(
            "support-v1 stable",
            lambda: self.status("adapterroutes", "support-bot").get("stableAdapter") == "support-v1",
            60,
        )
        self.wait("the router answering with support-v1", lambda: self._probe() == "support-v1", 60)
        self.say(self.world.kubectl("get", "ar").rstrip())

    def canary_v2(self, traffic: Traffic) -> None:
        self.world.api.patch("adapterroutes", NAMESPACE, "support-bot", {"spec": {"adapter": "support-v2"}})
        seen: list[str] = []

        def promoted() -> bool:
            status = self.status("adapterroutes", "support-bot")
            step = f"{status.get('phase')} step {status.get('currentStep')} weight {status.get('canaryWeight')}"
            if status.get("canaryAdapter") and (not seen or seen[-1] != step):
                seen.append(step)
                self.say(f"   {step}: {status.get('message')}")
            if status.get("phase") == "RolledBack":
                raise DemoFailed(f"v2 was rolled back: {status.get('message')}")
            return status.get("stableAdapter") == "support-v2" and status.get("phase") == "Healthy"

        self.wait(
            "support-v2 promoted", promoted, 300, lambda: f"clients: {traffic.sent} sent, {traffic.failed} failed"
        )
        analysis = self.status("adapterroutes", "support-bot").get("lastAnalysis") or {}
        self.say(f"   last analysis: {analysis.get('decision')} {analysis.get('reasons')}")
        self.say(self.world.kubectl("get", "ar").rstrip())

    def broken_v3(self, traffic: Traffic) -> None:
        v2 = self.status("loratrainings", "support-v2")["output"]
        manifest = {
            "apiVersion": "loraops.io/v1alpha1", "kind": "LoraAdapter", "metadata": {"name": "support-v3"},
            "spec": {"baseModel": "tiny-llama", "source": {"uri": v2["uri"], "sha256": v2["sha256"]},
                     "release": {"version": "3.0.0"}, "provenance": {"owner": "support-ml", "license": "apache-2.0"},
                     "serving": {"deployment": "tiny-vllm"}, "tenants": ["acme", "globex", "initech"]},
        }  # fmt: skip
        self.world.api.create("loraadapters", manifest, NAMESPACE)
        self.wait("support-v3 Ready", lambda: self.status("loraadapters", "support-v3").get("phase") == "Ready", 300)
        served = self.status("loraadapters", "support-v3").get("servedName") or "support-v3"
        self.world.chaos.failing[served] = 0.3
        self.say(f"   support-v3 is Ready, but 30% of its answers now fail (chaos proxy on {served})")
        fallbacks_before = traffic.fallbacks
        patch = {
            "spec": {
                "adapter": "support-v3",
                "strategy": {"steps": [{"cohort": {"tenants": ["acme"]}}, {"weight": 50}]},
            }
        }
        self.world.api.patch("adapterroutes", NAMESPACE, "support-bot", patch)

        def rolled_back() -> dict[str, Any] | None:
            status = self.status("adapterroutes", "support-bot")
            if status.get("stableAdapter") == "support-v3":
                raise DemoFailed("the broken support-v3 was promoted")
            return status if status.get("phase") == "RolledBack" else None

        status = self.wait("the automatic rollback", rolled_back, 180)
        self.say(f"   {status.get('message')}")
        self.wait("the router back on support-v2", lambda: self._probe("acme") == "support-v2", 60)
        self.notes.append(f"fallbacks to the base model while v3 failed: {traffic.fallbacks - fallbacks_before}")
        self.say(self.world.kubectl("get", "ar").rstrip())

    def _probe(self, tenant: str = "initech") -> str | None:
        request = chat_request(f"{self.world.router_url}/v1/chat/completions", tenant, "probe", "hi", max_tokens=2)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.headers.get("x-loraops-adapter")
        except OSError:
            return None

    # --- the story ---
    def run(self) -> int:
        self.stage("prepare: tiny model on a PVC, dataset, golden set", self.prepare)
        self.stage("train support-v1 and support-v2 (real trainer in local Jobs)", self.train)
        self.stage("release: verify digests, load into vLLM, evaluate against the base model", self.release)
        self.stage("route support-bot to support-v1", self.route_v1)
        traffic = Traffic(self.world.router_url).start()
        try:
            self.stage("canary support-v1 → support-v2: mirror, cohort acme, 20%, 50% (clients running)",
                       lambda: self.canary_v2(traffic))  # fmt: skip
            self.stage("release a broken support-v3: automatic rollback, base fallback",
                       lambda: self.broken_v3(traffic))  # fmt: skip
        finally:
            traffic.stop()
        self.save_metrics()
        self.summary(traffic)
        if traffic.failed:
            raise DemoFailed(f"{traffic.failed} client requests failed: {traffic.failures[:3]}")
        return 0

    def save_metrics(self) -> None:
        """What operator, router and agent expose at the end, for a live check of the dashboard's queries."""
        from prometheus_client import generate_latest

        from loraops.devmode.world import POD
        from loraops.kube.metrics import REGISTRY

        folder = self.world.state / "metrics"
        folder.mkdir(exist_ok=True)
        (folder / "operator.prom").write_bytes(generate_latest(REGISTRY))
        agent = self.world.replicas.replicas[POD].agent_url
        for name, url in (("router", self.world.router_url), ("agent", agent)):
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                (folder / f"{name}.prom").write_bytes(response.read())

    def summary(self, traffic: Traffic) -> None:
        self.say("\n== summary")
        for title, seconds in self.timings:
            self.say(f"  {seconds:7.1f}s  {title}")
        self.say(f"  client requests: {traffic.sent}, failed: {traffic.failed}")
        answered = ", ".join(f"{k}: {v}" for k, v in sorted(traffic.by_adapter.items()))
        self.say(f"  answered by: {answered}")
        for note in self.notes:
            self.say(f"  {note}")


def demo(state: pathlib.Path, headless: bool = False) -> int:
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("kopf", "aiohttp", "loraops"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    run_dir = state / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.monotonic()
    print("== start: fake Kubernetes API, operator, local Job runner, vLLM (CPU), agent, router", flush=True)
    try:
        with dev_world(run_dir) as world:
            print(f"   up in {time.monotonic() - started:.1f}s", flush=True)
            code = Demo(world, headless).run()
    except DemoFailed as failure:
        print(f"\nDEMO FAILED: {failure}", flush=True)
        return 1
    print(f"\nDemo finished in {time.monotonic() - started:.0f}s; everything it started has stopped.", flush=True)
    return code
