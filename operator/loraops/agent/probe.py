"""The effect probe: does the loaded adapter answer differently from the base model?

vLLM answers 200 to a load whose weights change nothing (all-zero B from PEFT's default init, a prefix it
does not apply; NOTES), and then serves the base model's answers under the adapter's name. After each load the
agent sends a few fixed prompts, greedy and with logprobs, to the base and to the adapter, one request at a
time. Identical text and logprobs for every prompt means the adapter has no effect. A difference is confirmed
by asking the base again: on a server that is not batch-invariant (live traffic shares the batches) the base's
own answer can move, and then only a larger move of the adapter's counts (`judge`); when nothing but such
noise is seen, the probe says it is inconclusive instead of guessing. The first adapter request also pays any
lazy set-up in vLLM, so the probe pre-warms the adapter for its first real request; its latency is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from loraops.agent.vllmapi import Completion, VllmApi

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def add(a, b):\n    return",
    "Once upon a time, there was",
    "Q: What is two plus two?\nA:",
)
LOGPROB_TOLERANCE = 1e-4
"""Greedy float32 decoding of the same request repeats its logprobs to ~1e-6; a LoRA that applies moves them
far more. The tolerance only absorbs rounding, it does not judge whether an effect is large enough."""
NOISE_FACTOR = 10.0
"""With equal texts, the adapter's logprob move must exceed this many times the base's own move between two
identical requests to count as an effect."""
PROBE_ROUNDS = 3
"""Rounds of asking again the prompts whose base answer did not hold still, before the probe is inconclusive."""


@dataclass(frozen=True)
class ProbeResult:
    effective: bool | None
    """None: inconclusive (the base model's own answers moved as much as the adapter's)."""
    latency: float
    """Seconds of the adapter's first probe request (cold: what its first real request would have paid)."""
    message: str


def logprob_gap(base: Completion, adapter: Completion) -> float | None:
    """The largest |Δ logprob| over the tokens both answers carry; None without logprobs on both sides."""
    if base.logprobs is None or adapter.logprobs is None:
        return None
    pairs = zip(base.logprobs, adapter.logprobs, strict=False)
    return max((abs(a - b) for a, b in pairs if a is not None and b is not None), default=0.0)


def describe_difference(prompt: str, base: Completion, adapter: Completion, second: str = "adapter") -> str:
    """One differing prompt, said so that an operator can see how the answer changed (`second` names the
    answer compared with the base's: the adapter's, or the base's own when asked again)."""
    if base.text != adapter.text:
        return f"{prompt!r}: base {base.text!r}, {second} {adapter.text!r}"
    # Equal texts that differ always carry logprobs on both sides (same_answer), so the gap is a number.
    return f"{prompt!r}: same text, logprobs differ by up to {logprob_gap(base, adapter) or 0.0:.3g}"


def same_answer(base: Completion, adapter: Completion) -> bool:
    """Equal text and, when both carry them, logprobs equal within LOGPROB_TOLERANCE."""
    if base.text != adapter.text:
        return False
    if base.logprobs is None or adapter.logprobs is None:
        return True
    if len(base.logprobs) != len(adapter.logprobs):
        return False
    return all(
        (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= LOGPROB_TOLERANCE)
        for a, b in zip(base.logprobs, adapter.logprobs, strict=True)
    )


Judgement = Literal["same", "differs", "unstable"]


def judge(base: Completion, adapter: Completion, base_again: Completion) -> Judgement:
    """One prompt: does the adapter's answer differ from the base's by more than the base differs from itself?

    `base_again` is the base model asked the same greedy request once more, after the adapter. A served model is
    not always batch-invariant (bf16 kernels on GPUs; vLLM's CPU LoRA ops gave base rows another adapter's LoRA,
    see loraops.devmode.vllm_plugin), so a difference only counts when the base's own answer held still: the
    same text, and logprobs that moved well under the adapter's move."""
    if same_answer(base, adapter):
        return "same"
    if base.text != base_again.text:
        return "unstable"
    if adapter.text != base.text:
        return "differs"
    noise = logprob_gap(base, base_again) or 0.0
    moved = logprob_gap(base, adapter) or 0.0
    return "differs" if moved > max(LOGPROB_TOLERANCE, NOISE_FACTOR * noise) else "unstable"


async def run_probe(
    api: VllmApi,
    base_name: str,
    served_name: str,
    prompts: Sequence[str],
    max_tokens: int,
) -> ProbeResult:
    """Raises AgentFailure when vLLM does not answer a probe request (the caller records ProbeFailed).

    Per prompt: base, adapter and, only when they differ, base again (`judge`). Prompts whose base answer did
    not hold still are asked again, up to PROBE_ROUNDS in all, while no prompt has shown a difference."""
    latency: float | None = None
    differing = 0
    first_difference = first_unstable = ""
    pending = list(prompts)
    for _ in range(PROBE_ROUNDS):
        unstable: list[str] = []
        for prompt in pending:
            base = await api.complete(base_name, prompt, max_tokens)
            started = time.monotonic()
            answer = await api.complete(served_name, prompt, max_tokens)
            if latency is None:
                latency = time.monotonic() - started
            if same_answer(base, answer):
                continue
            again = await api.complete(base_name, prompt, max_tokens)
            verdict = judge(base, answer, again)
            if verdict == "differs":
                differing += 1
                first_difference = first_difference or describe_difference(prompt, base, answer)
            elif verdict == "unstable":
                unstable.append(prompt)
                first_unstable = first_unstable or describe_difference(prompt, base, again, "base again")
        if differing or not unstable:
            break
        pending = unstable
    count = len(prompts)
    effective: bool | None
    if differing:
        effective = True
        message = (
            f"{differing} of {count} probe prompts answered differently from base model {base_name!r} "
            f"(first, {first_difference})"
        )
    elif unstable:
        effective = None
        message = (
            f"inconclusive: base model {base_name!r} answered {len(unstable)} of {count} probe prompts differently "
            f"to the same greedy request, {PROBE_ROUNDS} times (first, {first_unstable}); the server is not "
            "batch-invariant enough to tell this adapter from the base (set spec.probe prompts with longer answers, "
            "or check the serving build)"
        )
    else:
        effective = False
        message = (
            f"all {count} probe prompts answered exactly like base model {base_name!r} (text and logprobs): "
            "the adapter has no effect (untrained all-zero lora_B, or weights on modules vLLM does not apply)"
        )
    return ProbeResult(effective=effective, latency=latency or 0.0, message=message)
