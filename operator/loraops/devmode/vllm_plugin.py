"""A vLLM general plugin: base-model rows in a mixed batch must not get a LoRA delta on the CPU build.

vLLM's PyTorch-native LoRA ops (`vllm.lora.ops.torch_ops`, what the CPU platform runs) gather
`weights[lora_indices]` for every token, and a base-model token's index is the sentinel -1: Python's negative
indexing picks the *last* adapter slot. So on the CPU build a base-model request batched next to an adapter
request silently gets the last slot's LoRA applied (vLLM PRs 48421 and 49656, open upstream; vLLM 0.32.0 has
it). The Triton kernels of the GPU build skip -1 and are not affected.

For loraops this broke what the base model's answers are for: the effect probe's reference (a zero-B adapter
looked effective because the *base* answered like another adapter) and the router's base fallback. The patch
zeroes the inputs of -1 rows and clamps their index, so their LoRA delta is exactly 0 and every other row is
computed as before. It is applied only where a probe of the original op shows the bug, so a fixed vLLM is left
alone; `LORAOPS_VLLM_CPU_LORA_FIX=0` turns it off.

vLLM loads general plugins (entry point group `vllm.general_plugins`, see pyproject.toml) in every one of its
processes; this module imports torch and vLLM only inside `register`, never from the operator.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vllm.plugins.loraops")
"""Under vLLM's own logger, so the line lands in the server log beside its other plugins."""

ENV_SWITCH = "LORAOPS_VLLM_CPU_LORA_FIX"
PATCHED_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
"""The gathering ops; the sgmv ops (prefill) call these through their module, so they are covered too."""
MODULES = ("vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.ops.torch_ops", "vllm.lora.punica_wrapper.punica_cpu")
"""Every module that holds its own reference to the ops."""


def skipping_no_lora_rows(op: Callable[..., Any]) -> Callable[..., Any]:
    """`op(inputs, weights, output, indices, ...)` with rows whose index is -1 contributing exactly zero."""

    @functools.wraps(op)
    def wrapper(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> Any:
        no_lora = indices < 0
        if bool(no_lora.any()):
            inputs = inputs.masked_fill(no_lora.unsqueeze(-1), 0)
            indices = indices.clamp(min=0)
        return op(inputs, weights, output, indices, *args, **kwargs)

    wrapper.__loraops_patched__ = True  # type: ignore[attr-defined]
    return wrapper


def has_no_lora_bug(bgmv_shrink: Callable[..., Any]) -> bool:
    """True when a -1 row picks up the last slot's weights (the op as vLLM 0.32 ships it)."""
    import torch

    weights = torch.zeros(2, 1, 1, 2)
    weights[-1] = 1.0  # only the last slot is non-zero
    output = torch.zeros(1, 1)
    bgmv_shrink(torch.ones(1, 2), weights, output, torch.tensor([-1]), 1.0)
    return bool(output.abs().sum() > 0)


def register() -> None:
    """vLLM's entry point: patch the CPU LoRA ops where they have the bug."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return
    import importlib

    try:
        modules = [importlib.import_module(name) for name in MODULES]
    except ImportError:  # a vLLM without these modules: nothing to patch
        return
    lora_ops = modules[0]
    if getattr(lora_ops.bgmv_shrink, "__loraops_patched__", False) or not has_no_lora_bug(lora_ops.bgmv_shrink):
        return
    for name in PATCHED_OPS:
        patched = skipping_no_lora_rows(getattr(lora_ops, name))
        for module in modules:
            if hasattr(module, name):
                setattr(module, name, patched)
    log.info("loraops: vLLM's CPU LoRA ops now skip base-model rows (index -1) in mixed batches (%s)", ENV_SWITCH)
