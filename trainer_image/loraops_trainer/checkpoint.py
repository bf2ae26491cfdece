"""Checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint directory `.checkpoints/step-N/` holds the trainable weights, the optimizer and scheduler states,
every rank's RNG states, and `checkpoint.json` (step, config fingerprint, world size, running metrics),
written last: a checkpoint without it is incomplete and ignored. The position in the data is a function of
the step (see `data.BatchPlan`), so it needs no iterator state; it is recorded anyway and checked.
"""

from __future__ import annotations

import json
import pathlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import ConfigError
from .storage import CHECKPOINT_MARKER

WEIGHTS = "adapter.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"


@dataclass
class CheckpointMeta:
    step: int
    micro_batch: int
    fingerprint: str
    world_size: int
    total_steps: int
    train_loss_first: float | None = None
    tokens_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain Python values: they travel through `all_gather_object` (which
    mishandles tensors in torch 2.13) and load with `torch.load(weights_only=True)`."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, [int(k) for k in keys], int(position), int(has_gauss), float(cached)),
        "torch": torch.random.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.random.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def save(
    directory: pathlib.Path,
    meta: CheckpointMeta,
    parameters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
) -> None:
    """Write a checkpoint into `directory` (an empty staging directory), the marker last."""
    save_file({name: p.detach().to("cpu").contiguous() for name, p in parameters.items()}, str(directory / WEIGHTS))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER)
    torch.save(scheduler_state, directory / SCHEDULER)
    torch.save(rng_states, directory / RNG)
    (directory / CHECKPOINT_MARKER).write_text(json.dumps(asdict(meta), indent=2, sort_keys=True))


def read_meta(directory: pathlib.Path) -> CheckpointMeta:
    try:
        raw = json.loads((directory / CHECKPOINT_MARKER).read_text())
        return CheckpointMeta(**raw)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError("CheckpointInvalid", f"{directory}: unreadable checkpoint ({error})") from None


def check_compatible(meta: CheckpointMeta, fingerprint: str, world_size: int, where: str) -> None:
    """Refuse a checkpoint of another training: resuming it would silently mix two configurations."""
    if meta.fingerprint != fingerprint:
        raise ConfigError(
            "CheckpointMismatch",
            f"the checkpoint at {where} (step {meta.step}) was written by a different configuration "
            f"(fingerprint {meta.fingerprint[:12]}…, this run {fingerprint[:12]}…); use a new output uri, "
            "or delete the checkpoints to start over",
        )
    if meta.world_size != world_size:
        raise ConfigError(
            "CheckpointMismatch",
            f"the checkpoint at {where} was written by {meta.world_size} processes, this run has {world_size}; "
            "the data order depends on it",
        )


def load(
    directory: pathlib.Path,
    rank: int,
    parameters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG; return the scheduler state for the caller."""
    weights = load_file(str(directory / WEIGHTS))
    if set(weights) != set(parameters):
        missing = sorted(set(parameters) - set(weights))[:3]
        extra = sorted(set(weights) - set(parameters))[:3]
        raise ConfigError(
            "CheckpointMismatch",
            f"{directory}: the checkpoint's parameters differ from the model's (missing {missing}, extra {extra})",
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor.to(parameters[name].device, parameters[name].dtype))
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER, map_location=device, weights_only=True))
    scheduler_state: dict[str, Any] = torch.load(directory / SCHEDULER, weights_only=True)
    rng_states = torch.load(directory / RNG, weights_only=True)
    set_rng_state(rng_states[rank])
    return scheduler_state
