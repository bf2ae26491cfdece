"""The real vLLM CPU server answers the base model's requests as the base model while adapter requests share
their batches and every adapter slot holds an adapter (vLLM's CPU LoRA ops gave base rows the last slot's LoRA:
loraops.devmode.vllm_plugin). The effect probe and the router's base fallback both rest on this."""

from __future__ import annotations

import concurrent.futures
import pathlib
from typing import Any

import pytest

from loraops.devmode.vllm import VllmOptions
from tests.e2e.adapters import make_adapter

pytestmark = [pytest.mark.e2e, pytest.mark.adapters]

PROMPTS = ("The capital of France is", "def add(a, b):\n    return", "Once upon a time, there was")


def answer(server: Any, model: str, prompt: str) -> tuple[str, list[float]]:
    choice = server.complete(model, prompt, max_tokens=8, logprobs=1)["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


def test_base_answers_do_not_change_when_batched_with_adapters(
    vllm_server: Any, tiny_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    names = [f"mixed-{seed}" for seed in range(VllmOptions(model=tiny_model).max_loras)]
    alone = {prompt: answer(vllm_server, "tiny-llama", prompt) for prompt in PROMPTS}
    try:
        # As many adapters as vLLM has slots, each loaded (and so activated) in turn: the last slot is taken.
        for seed, name in enumerate(names, start=1):
            path = make_adapter(tiny_model, tmp_path / name, seed=seed)
            vllm_server.request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        adapted = {(name, p): answer(vllm_server, name, p) for name in names for p in PROMPTS}
        assert all(any(adapted[(name, p)] != alone[p] for p in PROMPTS) for name in names), "each adapter applies"

        jobs = [(model, prompt) for _ in range(3) for prompt in PROMPTS for model in ("tiny-llama", *names)]
        with concurrent.futures.ThreadPoolExecutor(len(names) + 2) as pool:
            answers = list(pool.map(lambda job: answer(vllm_server, *job), jobs))
        for (model, prompt), got in zip(jobs, answers, strict=True):
            expected = alone[prompt] if model == "tiny-llama" else adapted[(model, prompt)]
            assert got[0] == expected[0], (model, prompt, got, expected)
            assert got[1] == pytest.approx(expected[1], abs=1e-4), (model, prompt)
    finally:
        for name in names:
            vllm_server.request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
