"""Checkpoints and resume: a stopped run continues where it stopped, never redoing or skipping a step, and
ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.errors import EXIT_CONFIG, EXIT_PREEMPTED, ConfigError
from loraops_trainer.progress import Reporter

from .conftest import run_program, sigterm_at_step, write_config

pytestmark = pytest.mark.trainer

PROGRESS_KEYS = {"event", "step", "total_steps", "loss", "learning_rate", "tokens_per_second", "eta_seconds"}
TOTAL = 60


def adapter_weights(directory: pathlib.Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter_model.safetensors"))


def resume_config(
    tiny_model: pathlib.Path, dataset: pathlib.Path, output: pathlib.Path, **overrides: Any
) -> dict[str, Any]:
    # Dropout on, warm-up and a decaying schedule: resuming must restore RNG and scheduler, not only weights.
    hyperparameters = {
        "learningRate": 3e-3,
        "scheduler": "cosine",
        "warmupSteps": 5,
        **overrides.pop("hyperparameters", {}),
    }
    return testing.train_config(
        tiny_model,
        dataset,
        output,
        fmt="chat",
        max_steps=TOTAL,
        lora={"dropout": 0.1},
        hyperparameters=hyperparameters,
        **overrides,
    )


def test_sigterm_checkpoints_and_the_restart_finishes_with_no_step_done_twice(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    train_inprocess: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    reference = tmp_path / "uninterrupted"
    train_inprocess(resume_config(tiny_model, datasets["chat"], reference))

    output = tmp_path / "adapter"
    config = write_config(tmp_path / "config.json", resume_config(tiny_model, datasets["chat"], output))
    termination = tmp_path / "termination-log"
    env = {"LORAOPS_TERMINATION_LOG": str(termination)}
    stopped = sigterm_at_step("train", "--config", str(config), step=10, env=env)
    first_run = stopped.events
    assert stopped.code == EXIT_PREEMPTED

    (checkpoint,) = [e for e in first_run if e["event"] == "checkpoint"]
    stopped_at = checkpoint["step"]
    assert 10 <= stopped_at < TOTAL
    steps_before = [e["step"] for e in first_run if e["event"] == "progress"]
    assert steps_before == list(range(1, stopped_at + 1))
    for event in first_run:
        if event["event"] == "progress":
            assert set(event) >= PROGRESS_KEYS
    marker = json.loads((output / ".checkpoints" / f"step-{stopped_at}" / "checkpoint.json").read_text())
    assert marker["step"] == stopped_at and marker["micro_batch"] == stopped_at
    assert not (output / "loraops-manifest.json").exists()
    assert json.loads(termination.read_text())["exit_code"] == EXIT_PREEMPTED

    # A different configuration must not pick up this checkpoint.
    other = write_config(
        tmp_path / "other.json",
        resume_config(tiny_model, datasets["chat"], output, hyperparameters={"learningRate": 1e-3}),
    )
    refused = run_program("train", "--config", str(other), env={"LORAOPS_TERMINATION_LOG": str(termination)})
    assert refused.code == EXIT_CONFIG
    assert refused.last["reason"] == "CheckpointMismatch" and f"step {stopped_at}" in refused.last["message"]
    assert (output / ".checkpoints" / f"step-{stopped_at}" / "checkpoint.json").is_file()

    resumed = run_program("train", "--config", str(config), env={"LORAOPS_TERMINATION_LOG": str(termination)})
    assert resumed.code == 0, resumed.stderr[-2000:]
    (started,) = resumed.of("started")
    assert started["resumed_from_step"] == stopped_at
    steps_after = [e["step"] for e in resumed.of("progress")]
    assert steps_after == list(range(stopped_at + 1, TOTAL + 1))
    assert sorted(steps_before + steps_after) == list(range(1, TOTAL + 1))
    result = resumed.last
    assert result["event"] == "result" and result["steps"] == TOTAL and result["resumed_from_step"] == stopped_at
    assert not (output / ".checkpoints").exists()
    manifest = json.loads((output / "loraops-manifest.json").read_text())
    assert manifest["training"]["resumedFromStep"] == stopped_at
    summary = json.loads(termination.read_text())
    assert summary["event"] == "result" and summary["digest"] == manifest["digest"]
    assert len(termination.read_bytes()) <= 4096

    import torch

    resumed_weights, reference_weights = adapter_weights(output), adapter_weights(reference)
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.allclose(resumed_weights[name], tensor, atol=1e-6), name


class CrashAt(Reporter):
    """A reporter that kills the run (as an OOM or a node loss would) after a given progress step."""

    def __init__(self, step: int) -> None:
        super().__init__(enabled=False)
        self.step = step
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = super().emit(event, **fields)
        self.events.append(record)
        if event == "progress" and fields["step"] == self.step:
            raise RuntimeError("simulated crash")
        return record


def test_a_crash_resumes_from_the_last_complete_checkpoint(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    train_inprocess: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    output = tmp_path / "adapter"
    config = resume_config(tiny_model, datasets["chat"], output, checkpoint={"intervalSteps": 5, "keepLast": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_inprocess(config, reporter=CrashAt(12))
    checkpoints = output / ".checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-10", "step-5"]
    # A checkpoint that was being written when the pod died has no marker and must be ignored.
    (checkpoints / "step-15").mkdir()
    (checkpoints / "step-15" / "adapter.safetensors").write_bytes(b"partial")

    result, events = train_inprocess(config)
    (started,) = [e for e in events if e["event"] == "started"]
    assert started["resumed_from_step"] == 10
    assert next(e["step"] for e in events if e["event"] == "progress") == 11
    assert result["steps"] == TOTAL


def test_a_published_adapter_is_reported_again_not_retrained_or_overwritten(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    train_inprocess: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    output = tmp_path / "adapter"
    config = testing.train_config(tiny_model, datasets["completion"], output, max_steps=3)
    first, _ = train_inprocess(config)
    again, events = train_inprocess(config)
    assert again["already_published"] is True and again["digest"] == first["digest"]
    assert not [e for e in events if e["event"] == "progress"]
    with pytest.raises(ConfigError) as raised:
        train_inprocess(testing.train_config(tiny_model, datasets["completion"], output, max_steps=4))
    assert raised.value.reason == "OutputHoldsAnotherAdapter"
    assert json.loads((output / "loraops-manifest.json").read_text())["digest"] == first["digest"]
