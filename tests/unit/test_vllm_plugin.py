"""The vLLM CPU LoRA fix (loraops.devmode.vllm_plugin) on vLLM's own PyTorch-native ops: a row whose index is -1
(a base-model token) gets exactly no LoRA delta, every other row is computed bit for bit as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from loraops.devmode import vllm_plugin

pytestmark = [pytest.mark.adapters]

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

SLOTS, RANK, HIDDEN, TOKENS = 4, 3, 8, 6
INDICES = [2, -1, 0, -1, 3, 3]  # base-model rows between adapter rows, as in a mixed batch


def original(name: str) -> Callable[..., Any]:
    op = getattr(lora_ops, name)
    return getattr(op, "__wrapped__", op)


def run_op(op: Callable[..., Any], name: str, indices: list[int]) -> Any:
    generator = torch.Generator().manual_seed(7)  # the same inputs and weights on every call
    index = torch.tensor(indices)
    if name == "bgmv_shrink":
        inputs = torch.randn(TOKENS, HIDDEN, generator=generator)
        weights = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator)
        output = torch.zeros(TOKENS, RANK)
        op(inputs, weights, output, index, 0.5)
        return output
    inputs = torch.randn(TOKENS, RANK, generator=generator)
    weights = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=generator)
    if name == "bgmv_expand":
        output = torch.ones(TOKENS, HIDDEN)
        op(inputs, weights, output, index, True)
    else:
        output = torch.ones(TOKENS, 2 * HIDDEN)
        op(inputs, weights, output, index, HIDDEN, HIDDEN, True)
    return output


def test_the_shipped_shrink_op_is_probed_for_the_bug() -> None:
    fixed = vllm_plugin.skipping_no_lora_rows(original("bgmv_shrink"))
    assert vllm_plugin.has_no_lora_bug(fixed) is False
    # What vLLM 0.32.0 ships (the reason for the plugin); a vLLM with the upstream fix is left unpatched.
    assert vllm_plugin.has_no_lora_bug(original("bgmv_shrink")) is True


@pytest.mark.parametrize("name", vllm_plugin.PATCHED_OPS)
def test_no_lora_rows_get_no_delta_and_other_rows_are_unchanged(name: str) -> None:
    fixed = vllm_plugin.skipping_no_lora_rows(original(name))
    patched = run_op(fixed, name, INDICES)
    shipped = run_op(original(name), name, INDICES)
    base_rows = [i for i, index in enumerate(INDICES) if index < 0]
    lora_rows = [i for i, index in enumerate(INDICES) if index >= 0]
    assert torch.equal(patched[lora_rows], shipped[lora_rows])
    start = torch.zeros_like(patched) if name == "bgmv_shrink" else torch.ones_like(patched)  # the output before
    assert torch.equal(patched[base_rows], start[base_rows])  # no delta at all
    assert not torch.equal(shipped[base_rows], start[base_rows])  # the shipped op adds the last slot's


def test_register_patches_every_reference_once_and_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    modules = [importlib.import_module(name) for name in vllm_plugin.MODULES]
    for module in modules:
        for name in vllm_plugin.PATCHED_OPS:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, original(name))
    monkeypatch.setenv(vllm_plugin.ENV_SWITCH, "0")
    vllm_plugin.register()
    assert not getattr(lora_ops.bgmv_shrink, "__loraops_patched__", False)
    monkeypatch.delenv(vllm_plugin.ENV_SWITCH)
    vllm_plugin.register()
    vllm_plugin.register()  # idempotent: not wrapped twice
    for module in modules:
        for name in vllm_plugin.PATCHED_OPS:
            if hasattr(module, name):
                op = getattr(module, name)
                assert op.__loraops_patched__ and op.__wrapped__ is original(name), (module.__name__, name)
