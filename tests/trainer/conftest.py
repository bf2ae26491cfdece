"""Fixtures of the trainer tests: one tiny Llama per session, synthetic datasets, and runners that call the
trainer in-process (fast) or as the real program (`python -m loraops_trainer`, for exit codes and signals)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.cli import main
from loraops_trainer.config import TrainConfig, parse_config
from loraops_trainer.progress import Reporter


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: with tiny matrices, threads only add synchronisation, and on a loaded 2-core
    machine (other suites running) spinning OpenMP workers make each step many times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return testing.build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("datasets")
    return {
        fmt: testing.write_jsonl(root / f"{fmt}.jsonl", testing.capital_rows(fmt, 64))
        for fmt in ("chat", "completion", "text")
    }


@dataclass
class Outcome:
    code: int
    events: list[dict[str, Any]]
    stderr: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]


def parse_events(text: str) -> list[dict[str, Any]]:
    """Every stdout line must be a JSON object: that is the contract with the controller."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_config(path: pathlib.Path, config: dict[str, Any]) -> pathlib.Path:
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def train_quietly(
    config: dict[str, Any], reporter: Reporter | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `train()` in this process (for module-scoped fixtures too); returns (result, events): the events
    are the captured stdout lines, none when a `reporter` of the caller's took them."""
    from loraops_trainer.train import train

    stream = io.StringIO()
    result = train(parse_config(TrainConfig, config, "test"), reporter=reporter or Reporter(stream=stream))
    return result, parse_events(stream.getvalue()) if reporter is None else []


@pytest.fixture
def train_inprocess() -> Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]]:
    """`train_quietly` as a fixture."""
    return train_quietly


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """`python -m loraops_trainer ARGS` called in-process: same code path and exit code, no interpreter start."""

    def run(*args: str) -> Outcome:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Outcome(code, parse_events(captured.out), captured.err)

    return run


def run_program(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Outcome:
    """The real program in a fresh interpreter."""
    process = subprocess.run(
        [sys.executable, "-m", "loraops_trainer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    return Outcome(process.returncode, parse_events(process.stdout), process.stderr)


def sigterm_at_step(*args: str, step: int, env: dict[str, str] | None = None, timeout: float = 120) -> Outcome:
    """The real program in a fresh interpreter, sent SIGTERM (what a preempted pod gets) once it reports
    progress at `step`; its events until it exits (stderr is not kept)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "loraops_trainer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert process.stdout is not None
    events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "progress" and events[-1]["step"] >= step:
            process.send_signal(signal.SIGTERM)
            break
    events += parse_events(process.stdout.read())
    return Outcome(process.wait(timeout=timeout), events, "")
