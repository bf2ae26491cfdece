"""One process or many: the same code runs alone or under torchrun (DDP; gloo on CPU, NCCL on GPU).

Rank 0 alone touches the output location and prints; decisions that depend on it (is the output writable,
is there a checkpoint) are taken on rank 0 and broadcast, so every rank raises the same error instead of the
others waiting forever in a collective.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from . import errors

T = TypeVar("T")


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's environment and join the process group when there is more than one process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        state = cls(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
        if state.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            timeout = datetime.timedelta(seconds=float(os.environ.get("LORAOPS_DIST_TIMEOUT_SECONDS", "1800")))
            dist.init_process_group(backend=backend, timeout=timeout)
        return state

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum across ranks."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(value) for value in tensor.tolist()]

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        tensor = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def all_gather(self, value: Any) -> list[Any]:
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 and give every rank its result, or make every rank raise its TrainerError."""
        if not self.enabled:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except errors.TrainerError as error:
                outcome = ("error", (type(error).__name__, error.reason, error.message))
        outcome = self.broadcast(outcome)
        if outcome[0] == "error":
            name, reason, message = outcome[1]
            raise getattr(errors, name)(reason, message)
        result: T = outcome[1]
        return result
