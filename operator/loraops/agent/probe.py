"""The effect probe: does the loaded adapter answer differently from the base model?

vLLM answers 200 to a load whose weights change nothing (all-zero B from PEFT's default init, a prefix it
does not apply; NOTES), and then serves the base model's answers under the adapter's name. After each load the
agent sends a few fixed prompts, greedy and with logprobs, to the base and to the adapter, one request at a
time (two requests in one batch could differ by float noise). Identical text and logprobs for every prompt
means the adapter has no effect. The first adapter request also pays any lazy set-up in vLLM, so the probe
pre-warms the adapter for its first real request; its latency is what is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from loraops.agent.vllmapi import Completion, VllmApi

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def add(a, b):\n    return",
    "Once upon a time, there was",
    "Q: What is two plus two?\nA:",
)
DEFAULT_MAX_TOKENS = 8
LOGPROB_TOLERANCE = 1e-4
"""Greedy float32 decoding of the same request repeats its logprobs to ~1e-6; a LoRA that applies moves them
far more. The tolerance only absorbs rounding, it does not judge whether an effect is large enough."""


@dataclass(frozen=True)
class ProbeResult:
    effective: bool
    latency: float
    """Seconds of the adapter's first probe request (cold: what its first real request would have paid)."""
    message: str
    differing: int
    prompts: int


def logprob_gap(base: Completion, adapter: Completion) -> float | None:
    """The largest |Δ logprob| over the tokens both answers carry; None without logprobs on both sides."""
    if base.logprobs is None or adapter.logprobs is None:
        return None
    pairs = zip(base.logprobs, adapter.logprobs, strict=False)
    return max((abs(a - b) for a, b in pairs if a is not None and b is not None), default=0.0)


def describe_difference(prompt: str, base: Completion, adapter: Completion) -> str:
    """One differing prompt, said so that an operator can see how the adapter changed the answer."""
    if base.text != adapter.text:
        return f"{prompt!r}: base {base.text!r}, adapter {adapter.text!r}"
    gap = logprob_gap(base, adapter)
    return f"{prompt!r}: same text, " + ("different lengths" if gap is None else f"logprobs differ by up to {gap:.3g}")


def same_answer(base: Completion, adapter: Completion, tolerance: float = LOGPROB_TOLERANCE) -> bool:
    """Equal text and, when both carry them, logprobs equal within `tolerance`."""
    if base.text != adapter.text:
        return False
    if base.logprobs is None or adapter.logprobs is None:
        return True
    if len(base.logprobs) != len(adapter.logprobs):
        return False
    return all(
        (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tolerance)
        for a, b in zip(base.logprobs, adapter.logprobs, strict=True)
    )


async def run_probe(
    api: VllmApi,
    base_name: str,
    served_name: str,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    tolerance: float = LOGPROB_TOLERANCE,
) -> ProbeResult:
    """Raises AgentFailure when vLLM does not answer a probe request (the caller records ProbeFailed)."""
    latency: float | None = None
    differing = 0
    first_difference = ""
    for prompt in prompts:
        base = await api.complete(base_name, prompt, max_tokens)
        started = time.monotonic()
        answer = await api.complete(served_name, prompt, max_tokens)
        if latency is None:
            latency = time.monotonic() - started
        if not same_answer(base, answer, tolerance):
            differing += 1
            first_difference = first_difference or describe_difference(prompt, base, answer)
    count = len(prompts)
    if differing:
        message = (
            f"{differing} of {count} probe prompts answered differently from base model {base_name!r} "
            f"(first, {first_difference})"
        )
    else:
        message = (
            f"all {count} probe prompts answered exactly like base model {base_name!r} (text and logprobs): "
            "the adapter has no effect (untrained all-zero lora_B, or weights on modules vLLM does not apply)"
        )
    return ProbeResult(
        effective=differing > 0, latency=latency or 0.0, message=message, differing=differing, prompts=count
    )
