"""`loraops dev demo`: the lifecycle on one machine, narrated, with a summary at the end.

It plays what is built so far and says plainly what is not: each stage reports what it observed.
"""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from loraops.api import KINDS
from loraops.devmode.cluster import DEFAULT_STATE, DevCluster, dev_cluster, repo_root


class Demo:
    def __init__(self, cluster: DevCluster, headless: bool) -> None:
        self.cluster = cluster
        self.headless = headless
        self.timings: list[tuple[str, float]] = []

    def kubectl(self, *args: str) -> str:
        binary = pathlib.Path(sys.executable).parent / "kubectl"
        command = [
            str(binary), "--kubeconfig", str(self.cluster.kubeconfig),
            "--cache-dir", str(self.cluster.state / "kube-cache"), *args,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def stage(self, title: str, action: Callable[[], None]) -> None:
        print(f"\n== {title}", flush=True)
        started = time.monotonic()
        action()
        self.timings.append((title, time.monotonic() - started))

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    def run(self) -> int:
        examples = repo_root() / "examples"
        self.stage(
            "apply the examples with kubectl",
            lambda: print(self.kubectl("apply", "--validate=false", "-f", str(examples)), end=""),
        )

        def accepted() -> bool:
            objects = [o for k in KINDS for o in self.cluster.api.list(k.plural, "team-a")]
            return bool(objects) and all(
                any(
                    c["type"] == "Accepted" and c["status"] == "True"
                    for c in (o.get("status") or {}).get("conditions", [])
                )
                for o in objects
            )

        self.stage("the operator accepts every resource", lambda: self.wait(accepted, 30, "acceptance"))
        self.stage("kubectl get lt,la,ar", lambda: print(self.kubectl("get", "lt,la,ar"), end=""))
        print("\n== summary")
        for title, seconds in self.timings:
            print(f"  {seconds:6.2f}s  {title}")
        print(
            "\nBuilt so far: the API (CRDs, validation), the fake API server and the operator skeleton.\n"
            "Training Jobs, adapter loading into vLLM and traffic routing join this story as their controllers land."
        )
        return 0


def demo(state: pathlib.Path = DEFAULT_STATE, headless: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING)
    with dev_cluster(state / "demo") as cluster:
        return Demo(cluster, headless).run()
