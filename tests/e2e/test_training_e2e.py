"""e2e: the real LoraTraining controller drives the real trainer through the local Job runner."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.jobrunner import LocalJobRunner
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry
from loraops_trainer.testing import build_tiny_llama, capital_rows, write_jsonl
from tests.conftest import NAMESPACE

pytestmark = [pytest.mark.e2e, pytest.mark.training]


@pytest.fixture
def runner(fake_api: FakeKubeApi, tmp_path: pathlib.Path) -> Iterator[LocalJobRunner]:
    with LocalJobRunner(fake_api, tmp_path / "cluster", [NAMESPACE]) as job_runner:
        yield job_runner


def manifest(name: str, max_steps: int) -> dict[str, Any]:
    return {
        "apiVersion": "loraops.io/v1alpha1",
        "kind": "LoraTraining",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"name": "tiny-llama", "uri": "pvc://models/tiny"},
            "dataset": {"uri": "pvc://data/capitals.jsonl", "format": "completion", "version": "2026-11"},
            "method": "lora",
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
            "hyperparameters": {
                "maxSteps": max_steps, "learningRate": 0.01, "scheduler": "constant", "warmupRatio": 0,
                "batchSize": 8, "maxSeqLength": 64,
            },
            "checkpointIntervalSteps": 1000,
            "resources": {"gpusPerNode": 0},
            "output": {"uri": "pvc://adapters"},
            "adapterTemplate": {"serving": {"deployment": "tiny-vllm"}, "releaseVersion": "1.0.0"},
        },
    }  # fmt: skip


def test_training_reaches_succeeded_with_progress_and_a_verified_digest(
    fake_api: FakeKubeApi, runner: LocalJobRunner, operator_config: OperatorConfig
) -> None:
    build_tiny_llama(runner.pvc_path("models") / "tiny")
    write_jsonl(runner.pvc_path("data") / "capitals.jsonl", capital_rows("completion", 128))
    config = operator_config.model_copy(update={"progress_seconds": 0.3})
    with OperatorThread(fake_api.url, registry=build_registry(config, login=False), namespaces=[NAMESPACE]):
        fake_api.create("loratrainings", manifest("capitals", 100), NAMESPACE)
        seen_steps: list[int] = []
        deadline = time.monotonic() + 240
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = (fake_api.get("loratrainings", NAMESPACE, "capitals") or {}).get("status") or {}
            step = (status.get("progress") or {}).get("step")
            if step is not None and (not seen_steps or seen_steps[-1] != step):
                seen_steps.append(step)
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(0.1)
    assert status.get("phase") == "Succeeded", status
    assert len(set(seen_steps)) >= 2, f"progress seen on the way: {seen_steps}"
    assert seen_steps == sorted(seen_steps) and seen_steps[-1] == 100
    output = status["output"]
    assert output["uri"] == "pvc://adapters/capitals/"
    assert output["metrics"]["train_loss_last"] < output["metrics"]["train_loss_first"]
    folder = runner.pvc_path("adapters") / "capitals"
    verify = subprocess.run(
        [sys.executable, "-m", "loraops_trainer", "verify", str(folder), "--digest", output["sha256"]],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    adapter = fake_api.get("loraadapters", NAMESPACE, "capitals")
    assert adapter is not None and adapter["spec"]["source"]["trainingRef"] == {"name": "capitals"}
    pods = fake_api.list("pods", NAMESPACE)
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Succeeded"


def test_a_config_error_fails_once_without_retries(
    fake_api: FakeKubeApi, runner: LocalJobRunner, operator_config: OperatorConfig
) -> None:
    build_tiny_llama(runner.pvc_path("models") / "tiny")
    write_jsonl(runner.pvc_path("data") / "capitals.jsonl", capital_rows("completion", 16))
    bad = manifest("bad-targets", 10)
    bad["spec"]["lora"]["targetModules"] = ["not_a_module"]
    with OperatorThread(fake_api.url, registry=build_registry(operator_config, login=False), namespaces=[NAMESPACE]):
        fake_api.create("loratrainings", bad, NAMESPACE)
        deadline = time.monotonic() + 120
        status: dict[str, Any] = {}
        while time.monotonic() < deadline and status.get("phase") != "Failed":
            status = (fake_api.get("loratrainings", NAMESPACE, "bad-targets") or {}).get("status") or {}
            time.sleep(0.2)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig" and "not_a_module" in failed["message"], failed
    assert len(fake_api.list("pods", NAMESPACE)) == 1, "a config error is not retried"
