"""The same program under torchrun (DDP over gloo on CPU): rank 0 alone prints and writes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from loraops_trainer import testing
from loraops_trainer.errors import EXIT_CONFIG

from .conftest import parse_events, run_program, sigterm_at_step, write_config

pytestmark = pytest.mark.trainer


def test_torchrun_two_processes_train_and_only_rank0_writes(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    output = tmp_path / "adapter"
    config = write_config(
        tmp_path / "config.json",
        testing.train_config(
            tiny_model,
            datasets["chat"],
            output,
            fmt="chat",
            max_steps=12,
            hyperparameters={"batchSize": 4},
            checkpoint={"intervalSteps": 5},
            progress={"intervalSteps": 4},
            dataset={"evalSplit": 0.1},
        ),
    )
    logs = tmp_path / "logs"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--log-dir",
            str(logs),
            "--redirects",
            "3",
            "-m",
            "loraops_trainer",
            "train",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    (rank0,) = logs.glob("*/attempt_0/0/stdout.log")
    (rank1,) = logs.glob("*/attempt_0/1/stdout.log")
    events = parse_events(rank0.read_text())
    assert rank1.read_text() == ""
    assert [e["event"] for e in events].count("checkpoint") == 2  # steps 5 and 10, once each
    (started,) = [e for e in events if e["event"] == "started"]
    assert started["world_size"] == 2
    result = events[-1]
    assert result["event"] == "result" and result["steps"] == 12

    manifest = json.loads((output / "loraops-manifest.json").read_text())
    assert manifest["training"]["worldSize"] == 2
    assert manifest["hyperparameters"]["effectiveBatchSize"] == 8
    assert sorted(p.name for p in output.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "loraops-manifest.json",
    ]
    verified = run_program("verify", str(output))
    assert verified.code == 0 and verified.last["ok"] is True
    assert verified.last["digest"] == result["digest"]


def test_launcher_keeps_the_workers_exit_code(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """torchrun reports every failure as 1; `train --nproc-per-node` keeps a config error a config error."""
    config = write_config(
        tmp_path / "config.json",
        testing.train_config(tiny_model, datasets["chat"], tmp_path / "o", fmt="chat", lora={"targetModules": ["qkv"]}),
    )
    outcome = run_program("train", "--config", str(config), "--nproc-per-node", "2")
    assert outcome.code == EXIT_CONFIG, outcome.stderr[-2000:]
    errors = outcome.of("error")
    assert {e["rank"] for e in errors} == {0, 1}
    assert all(e["reason"] == "TargetModuleNotFound" for e in errors)
    assert not (tmp_path / "o").exists()


def test_sigterm_to_the_launcher_checkpoints_every_rank_and_the_restart_resumes(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """Kubernetes sends SIGTERM to the container's first process: the launcher passes it to the workers, they
    agree on a step, write one checkpoint (with every rank's RNG state) and exit 143; the rerun resumes."""

    output = tmp_path / "adapter"
    config = write_config(
        tmp_path / "config.json",
        testing.train_config(
            tiny_model,
            datasets["chat"],
            output,
            fmt="chat",
            max_steps=30,
            hyperparameters={"batchSize": 4, "learningRate": 3e-3},
            lora={"dropout": 0.1},
        ),
    )
    stopped = sigterm_at_step("train", "--config", str(config), "--nproc-per-node", "2", step=5)
    events = stopped.events
    assert stopped.code == 143
    (checkpoint,) = [e for e in events if e["event"] == "checkpoint"]
    stopped_at = checkpoint["step"]
    assert {e["rank"] for e in events if e["event"] == "error"} == {0, 1}
    assert all(e["reason"] == "Preempted" for e in events if e["event"] == "error")
    assert [e["step"] for e in events if e["event"] == "progress"] == list(range(1, stopped_at + 1))

    resumed = run_program("train", "--config", str(config), "--nproc-per-node", "2")
    assert resumed.code == 0, resumed.stderr[-2000:]
    assert resumed.of("started")[0]["resumed_from_step"] == stopped_at
    assert [e["step"] for e in resumed.of("progress")] == list(range(stopped_at + 1, 31))
    assert run_program("verify", str(output)).code == 0
