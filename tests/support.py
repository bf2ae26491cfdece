"""Helpers shared by test modules (fixtures live in conftest.py files)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loraops.adapters.deployment import AGENT_CONTAINER, vllm_container
from loraops.devmode.apiserver import FakeKubeApi


@dataclass
class Kubectl:
    kubeconfig: pathlib.Path
    cache_dir: pathlib.Path

    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        binary = pathlib.Path(sys.executable).parent / "kubectl"
        command = [str(binary), "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir), *args]
        result = subprocess.run(command, capture_output=True, text=True, input=input, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, message: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; its last value is returned. Fails with `message` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)


def patched_deployment(api: FakeKubeApi, namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment once the operator has added the agent sidecar to its template, else None."""
    found = api.get("deployments", namespace, name)
    return found if found is not None and vllm_container(found, AGENT_CONTAINER) is not None else None
