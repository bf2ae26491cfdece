"""1,000 LoraTrainings applied to the fake API with the real operator in its own process.

Figures: seconds until all 1,000 Jobs exist, reconciles per second over that time, the operator's RSS, and
its CPU seconds over 60 s of idling afterwards (≈ 0 when nothing is busy-polling).
"""

from __future__ import annotations

import copy
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.request
from typing import Any

import yaml

from bench.bench_router import cpu_seconds
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.vllm import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
OBJECTS = int(os.environ.get("BENCH_TRAININGS", "1000"))
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))


def _rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", pathlib.Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def _reconciles(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(m) for m in re.findall(r'^loraops_reconcile_total\{kind="LoraTraining",result="ok"\} (\S+)$', text, re.M)
    )


def run() -> dict[str, Any]:
    template = yaml.safe_load((REPO / "examples" / "20-training.yaml").read_text())
    template["metadata"].pop("namespace", None)
    with FakeKubeApi(crd_dirs=[REPO / "crds"], history_limit=2, request_log_limit=1000) as api:
        api.ensure_namespace(NAMESPACE)
        metrics = free_port()
        operator = subprocess.Popen(
            [sys.executable, "-m", "loraops.cli", "operator", "--server", api.url, "--insecure", "-n", NAMESPACE,
             "--liveness-port", "0", "--metrics-port", str(metrics)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(3)  # operator start-up is not what is measured
            started = time.monotonic()
            for index in range(OBJECTS):
                manifest = copy.deepcopy(template)
                manifest["metadata"]["name"] = f"train-{index:04d}"
                api.create("loratrainings", manifest, NAMESPACE)
            applied = time.monotonic() - started
            while len(api.list("jobs", NAMESPACE)) < OBJECTS:
                time.sleep(0.25)
            seconds = time.monotonic() - started
            reconciles = _reconciles(metrics)
            time.sleep(5)  # let the tail of status writes and child events settle
            cpu_before = cpu_seconds(operator.pid)
            time.sleep(IDLE_SECONDS)
            idle_cpu = cpu_seconds(operator.pid) - cpu_before
            rss = _rss_mb(operator.pid)
        finally:
            operator.terminate()
            operator.wait(timeout=60)
    return {
        "objects": OBJECTS,
        "seconds_to_apply": round(applied, 2),
        "seconds_to_all_jobs": round(seconds, 2),
        "reconciles_per_s": round(reconciles / seconds, 1),
        "rss_mb": round(rss, 1),
        "idle_seconds": IDLE_SECONDS,
        "idle_cpu_seconds": round(idle_cpu, 2),
    }
