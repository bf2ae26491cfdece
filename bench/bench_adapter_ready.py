"""LoraAdapter apply → Ready: 50 adapters on 3 replicas, and one adapter on the real vLLM CPU server.

Setup: the fake API; the real operator (`loraops.runtime.run_async`, kopf's default settings) in its own
process; 3 "pods", each its own process with a real agent in front of a fake vLLM (`loraops.devmode.fakevllm`;
the load call itself was measured at 5–10 ms on real vLLM, NOTES). The vLLM Deployment is already
prepared as the operator leaves it for 50 adapters (agent sidecar, `--max-cpu-loras`), as in a cluster that
serves adapters already: the figure is placement, download, verification and load, not a pod rollout.

Each adapter's time runs from its create call returning to the first poll (every 20 ms) that sees it
`Ready` with `readyReplicas: 3/3`. The 50 are created back to back, so later ones queue behind earlier ones.

`real_vllm_one_s`: the same for one real PEFT adapter of a tiny Llama, loaded by a real agent into the real
vLLM CPU server (started before the clock runs); it includes the first LoRA load of a fresh server (seen at
~2.6 s on a bare agent PUT, against ~0.3 s for the next one), hence `real_vllm_second_s` for a second release.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from loraops.adapters.deployment import Needs, plan_deployment
from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.fakevllm import LocalReplicas, pod_from_template, vllm_deployment

REPO = pathlib.Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
ADAPTERS = int(os.environ.get("BENCH_ADAPTERS", "50"))
REPLICAS = 3
BASE = "meta-llama/Llama-3.1-8B-Instruct"
REPLICA = """
import asyncio, pathlib, sys
from aiohttp import web
from loraops.agent.config import AgentConfig
from loraops.agent.server import build_app
from loraops.agent.service import Agent
from loraops.devmode.fakevllm import FakeVllm

async def main(workdir: str, base: str, port: int) -> None:
    fake = FakeVllm(base_model=base)
    await fake.start()
    root = pathlib.Path(workdir)
    config = AgentConfig(adapters_dir=root / "adapters", vllm_url=fake.url, pvc_root=root / "pvc", watch_interval=0.5)
    runner = web.AppRunner(build_app(Agent(config), watch=True), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""
OPERATOR = """
import asyncio, sys
from loraops.config import OperatorConfig
from loraops.runtime import run_async
asyncio.run(run_async(OperatorConfig.model_validate_json(sys.argv[1])))
"""


def _deployment(base: str, args: list[str], config: OperatorConfig, adapters: int) -> dict[str, Any]:
    deployment = vllm_deployment("vllm", ["--served-model-name", base, *args], image="vllm", replicas=REPLICAS)
    plan = plan_deployment(deployment, None, Needs(max_rank=16, adapters=adapters), config)
    assert plan.patch is not None
    deployment["metadata"]["annotations"] = plan.patch["metadata"]["annotations"]
    deployment["spec"]["template"]["metadata"]["labels"].update(plan.patch["spec"]["template"]["metadata"]["labels"])
    deployment["spec"]["template"]["spec"] = {
        **deployment["spec"]["template"]["spec"],
        **plan.patch["spec"]["template"]["spec"],
    }
    return deployment


def _adapter(name: str, base: str, folder: pathlib.Path, digest: str, rank: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "loraops.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {"name": name},
        "spec": {
            "baseModel": base,
            "source": {"uri": f"file://{folder}", "sha256": digest},
            "lora": {"rank": rank, "targetModules": ["q_proj", "v_proj"]},
            "release": {"version": "1.0.0"},
            "provenance": {"owner": "bench", "license": "apache-2.0"},
            "serving": {"deployment": "vllm"},
        },
    }


def _synthetic_adapter(root: pathlib.Path, seed: int) -> tuple[pathlib.Path, str]:
    from loraops_trainer.manifest import build_manifest, write_manifest

    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}))
    (root / "adapter_model.safetensors").write_bytes(os.urandom(64 * 1024) + seed.to_bytes(4, "big"))
    manifest = build_manifest(root, kind="adapter", merge_state="unmerged")
    write_manifest(root, manifest)
    return root, str(manifest["digest"])


def _ready(api: FakeKubeApi, want: str) -> set[str]:
    return {
        o["metadata"]["name"]
        for o in api.list("loraadapters", NAMESPACE)
        if (o.get("status") or {}).get("phase") == "Ready" and o["status"].get("readyReplicas") == want
    }


def _measure(api: FakeKubeApi, adapters: list[dict[str, Any]], want: str, timeout: float) -> list[float]:
    created: dict[str, float] = {}
    for body in adapters:
        api.create("loraadapters", body, NAMESPACE)
        created[body["metadata"]["name"]] = time.monotonic()
    ready: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(ready) < len(adapters):
        now = time.monotonic()
        for name in (_ready(api, want) & set(created)) - set(ready):
            ready[name] = now
        if now > deadline:
            raise RuntimeError(f"only {len(ready)}/{len(adapters)} Ready after {timeout}s")
        time.sleep(0.02)
    return sorted(ready[name] - created[name] for name in created)


def _wait_operator(api: FakeKubeApi, timeout: float = 60) -> None:
    """Start the clock only once the operator serves: it has reconciled (and released) a throw-away adapter."""
    body = _adapter("warm-up", BASE, pathlib.Path("/nonexistent"), "0" * 64)
    body["spec"]["serving"]["deployment"] = "no-such-deployment"
    api.create("loraadapters", body, NAMESPACE)
    deadline = time.monotonic() + timeout
    while not ((api.get("loraadapters", NAMESPACE, "warm-up") or {}).get("status") or {}).get("phase"):
        if time.monotonic() > deadline:
            raise RuntimeError("the operator did not start")
        time.sleep(0.05)
    api.delete("loraadapters", NAMESPACE, "warm-up")
    while api.get("loraadapters", NAMESPACE, "warm-up") is not None:
        if time.monotonic() > deadline:
            raise RuntimeError("the operator did not release the warm-up adapter")
        time.sleep(0.05)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _operator(api: FakeKubeApi) -> subprocess.Popen[bytes]:
    config = OperatorConfig(
        namespaces=[NAMESPACE],
        server=api.url,
        insecure=True,
        liveness_port=None,
        metrics_port=None,
        agent_url_annotation=True,
        retry_seconds=1.0,
    )
    return subprocess.Popen(
        [sys.executable, "-c", OPERATOR, config.model_dump_json()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )


def _replica_processes(
    api: FakeKubeApi, deployment: dict[str, Any], work: pathlib.Path
) -> list[tuple[subprocess.Popen[str], str]]:
    """One process per pod (a real agent and its fake vLLM), as each pod has its own CPU in a cluster."""
    from loraops.devmode.fakevllm import free_port

    started = []
    for i in range(REPLICAS):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-c", REPLICA, str(work / f"pod-{i}"), BASE, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        started.append((process, f"http://127.0.0.1:{port}"))
    for i, (process, url) in enumerate(started):
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        api.create("pods", pod_from_template(deployment, f"vllm-{i}", url, f"10.0.0.{i + 1}"), NAMESPACE)
    return started


def _held(url: str) -> int:
    with urllib.request.urlopen(f"{url}/v1/adapters", timeout=10) as response:
        return sum(1 for a in json.load(response)["adapters"] if a["state"] == "Loaded")


def fleet(work: pathlib.Path) -> dict[str, Any]:
    config = OperatorConfig()
    with FakeKubeApi(crd_dirs=[REPO / "crds"]) as api:
        api.ensure_namespace(NAMESPACE)
        deployment = _deployment(BASE, ["--model", BASE], config, ADAPTERS)
        api.create("deployments", deployment, NAMESPACE)
        replicas = _replica_processes(api, deployment, work)
        bodies = [
            _adapter(f"support-{i:03d}", BASE, *_synthetic_adapter(work / "artifacts" / f"a{i:03d}", i))
            for i in range(ADAPTERS)
        ]
        operator = _operator(api)
        try:
            _wait_operator(api)
            patches_before = api.request_count("PATCH", r"/deployments/vllm$")
            started = time.monotonic()
            durations = _measure(api, bodies, f"{REPLICAS}/{REPLICAS}", timeout=300)
            total = time.monotonic() - started
            loads = [_held(url) for _, url in replicas]
            return {
                "adapters": ADAPTERS,
                "replicas": REPLICAS,
                "p50_s": round(statistics.median(durations), 3),
                "p99_s": round(_percentile(durations, 0.99), 3),
                "max_s": round(max(durations), 3),
                "all_ready_s": round(total, 3),
                "loaded_per_replica": loads,
                "deployment_patches": api.request_count("PATCH", r"/deployments/vllm$") - patches_before,
            }
        finally:
            operator.terminate()
            operator.wait(timeout=30)
            for process, _ in replicas:
                process.terminate()
                process.wait(timeout=30)


def _random_adapter(model: pathlib.Path, folder: pathlib.Path, seed: int) -> dict[str, Any]:
    """A PEFT LoRA with random A and B (it changes the answers) and its loraops manifest; returns the manifest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loraops_trainer.manifest import build_manifest, write_manifest

    torch.manual_seed(seed)
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft.save_pretrained(str(folder))
    manifest = build_manifest(folder, kind="adapter", merge_state="unmerged")
    write_manifest(folder, manifest)
    return manifest


def real_vllm(work: pathlib.Path) -> dict[str, Any]:
    from loraops.devmode.vllm import VllmOptions, VllmServer
    from loraops_trainer.testing import build_tiny_llama

    model = build_tiny_llama(work / "tiny-model")
    folder, folder2 = work / "real-adapter", work / "real-adapter-2"
    manifest, manifest2 = _random_adapter(model, folder, seed=1), _random_adapter(model, folder2, seed=2)
    server = VllmServer(VllmOptions(model=model, served_name="tiny-llama"), log_path=work / "vllm.log")
    server.start(timeout=300)
    try:
        with (
            FakeKubeApi(crd_dirs=[REPO / "crds"]) as api,
            LocalReplicas(work / "real-replicas", base_model="tiny-llama") as replicas,
        ):
            api.ensure_namespace(NAMESPACE)
            deployment = _deployment("tiny-llama", ["--model", str(model)], OperatorConfig(), 1)
            api.create("deployments", deployment, NAMESPACE)
            replica = replicas.add("vllm-0", vllm_url=server.url)
            api.create("pods", pod_from_template(deployment, "vllm-0", replica.agent_url, "10.0.0.1"), NAMESPACE)
            operator = _operator(api)
            try:
                _wait_operator(api)
                body = _adapter("support-real", "tiny-llama", folder, str(manifest["digest"]))
                (seconds,) = _measure(api, [body], "1/1", timeout=120)
                # A second release once vLLM has loaded one: the first LoRA load of a fresh server is the slow one.
                second = _adapter("support-real-2", "tiny-llama", folder2, str(manifest2["digest"]))
                (warm,) = _measure(api, [second], "1/1", timeout=120)
                with urllib.request.urlopen(f"{replicas.replicas['vllm-0'].agent_url}/v1/adapters/support-real") as r:
                    record = json.load(r)  # the agent's own account of the load (its effect probe included)
                # One served name per release: `<adapter>-<first 12 hex of the digest>` (docs/adapters.md).
                served = record["servedName"]
                assert served == f"support-real-{str(manifest['digest'])[:12]}", served
                answer = server.complete(served, "what is the capital of france?", max_tokens=4)
                assert answer["model"] == served
                api.delete("loraadapters", NAMESPACE, "support-real")
                api.delete("loraadapters", NAMESPACE, "support-real-2")
            finally:
                operator.terminate()
                operator.wait(timeout=30)
    finally:
        server.stop()
    return {
        "real_vllm_one_s": round(seconds, 3),
        "real_vllm_second_s": round(warm, 3),
        "real_vllm_agent_probe_s": record.get("probeLatencySeconds"),
        "real_vllm_effective": record.get("effective"),
    }


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-adapter-ready-") as tmp:
        work = pathlib.Path(tmp)
        result = fleet(work)
        try:
            result.update(real_vllm(work))
        except ImportError as error:  # no vLLM in this environment: say so rather than invent a figure
            result["real_vllm_one_s"] = None
            result["real_vllm_skipped"] = f"{error}"
    result["setup"] = (
        "fake API in this process; 3 pods = 3 processes, each a real agent before a fake vLLM; operator in its own "
        "process with kopf defaults; "
        "Deployment pre-sized, pods not rolled; Ready = phase Ready with readyReplicas N/N, polled every 20 ms"
    )
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
