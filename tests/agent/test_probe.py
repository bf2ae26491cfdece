"""The effect probe against the fake vLLM: an adapter that answers exactly like the base is NoEffect (kept
loaded, reported), one that changes the text or only the logprobs is effective; prompts are overridable."""

from __future__ import annotations

import aiohttp
import pytest

from loraops.agent.models import ProbeSpec
from loraops.agent.probe import DEFAULT_PROMPTS, PROBE_ROUNDS, judge, same_answer
from loraops.agent.vllmapi import Completion
from tests.agent.support import scrape, uri

pytestmark = [pytest.mark.adapters]


def sample(text: str, line_start: str) -> float:
    values = [float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, values)
    return values[0]


@pytest.mark.asyncio
async def test_adapter_answering_like_the_base_is_flagged_no_effect_but_stays_loaded(
    start_agent, fake_vllm, adapter
) -> None:
    folder, digest = adapter
    fake_vllm.answers["zero-b"] = "base"
    running = await start_agent()
    record = await running.client.put("zero-b", uri(folder), digest)
    assert (record.state, record.effective) == ("Loaded", False)
    assert "no effect" in str(record.probe_message) and record.probe_latency_seconds is not None
    assert "zero-b" in fake_vllm.adapters  # kept: the operator decides (not Ready), the agent only reports
    # Greedy, with logprobs, base then adapter for each default prompt, one request at a time.
    assert [(c["model"], c["prompt"]) for c in fake_vllm.completions] == [
        (model, prompt) for prompt in DEFAULT_PROMPTS for model in ("base", "zero-b")
    ]
    assert all(c["temperature"] == 0 and c["logprobs"] == 1 and c["max_tokens"] == 8 for c in fake_vllm.completions)
    text = await scrape(running.url)
    assert sample(text, 'loraops_agent_probes_total{result="no_effect"}') == 1
    assert sample(text, 'loraops_agent_failures_total{reason="NoEffect"}') == 1
    assert sample(text, 'loraops_agent_adapter_effective{name="zero-b",served_name="zero-b"}') == 0
    assert sample(text, "loraops_agent_probe_latency_seconds_count") == 1
    assert sample(text, "loraops_agent_adapters_loaded") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["text", "logprobs"])
async def test_adapter_changing_text_or_only_logprobs_is_effective(start_agent, fake_vllm, adapter, mode) -> None:
    folder, digest = adapter
    fake_vllm.answers["tuned"] = mode
    running = await start_agent()
    record = await running.client.put("tuned", uri(folder), digest)
    assert (record.state, record.effective) == ("Loaded", True)
    assert f"{len(DEFAULT_PROMPTS)} of {len(DEFAULT_PROMPTS)} probe prompts answered differently" in str(
        record.probe_message
    )
    # The message shows how: the first differing prompt, with both texts or the logprob gap.
    first = repr(DEFAULT_PROMPTS[0])
    if mode == "text":
        base = f" answer to {DEFAULT_PROMPTS[0][:12]!r}"
        tuned = f"{base} from tuned"
        assert str(record.probe_message).endswith(f"(first, {first}: base {base!r}, adapter {tuned!r})")
    else:
        assert str(record.probe_message).endswith(f"(first, {first}: same text, logprobs differ by up to 0.25)")
    text = await scrape(running.url)
    assert sample(text, 'loraops_agent_probes_total{result="effective"}') == 1
    assert sample(text, 'loraops_agent_adapter_effective{name="tuned",served_name="tuned"}') == 1


@pytest.mark.asyncio
async def test_probe_prompts_and_tokens_come_from_the_put(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    spec = ProbeSpec(prompts=["Ticket #1: printer on fire"], max_tokens=3)
    record = await running.client.put("support", uri(folder), digest, probe=spec)
    assert record.effective is True
    # Base, adapter, and base again: the difference holds only if the base's own answer held still.
    assert [(c["model"], c["prompt"], c["max_tokens"]) for c in fake_vllm.completions] == [
        ("base", "Ticket #1: printer on fire", 3),
        ("support", "Ticket #1: printer on fire", 3),
        ("base", "Ticket #1: printer on fire", 3),
    ]


@pytest.mark.asyncio
async def test_a_base_that_does_not_hold_still_makes_the_probe_inconclusive(start_agent, fake_vllm, adapter) -> None:
    """A zero-B adapter on a server whose base answers move between identical requests (what vLLM's CPU LoRA
    ops did to base rows in mixed batches): neither Effective nor NoEffect, but said so, after PROBE_ROUNDS."""
    folder, digest = adapter
    fake_vllm.answers["zero-b"] = "base"
    fake_vllm.unstable_base = True
    running = await start_agent()
    record = await running.client.put("zero-b", uri(folder), digest, probe=ProbeSpec(prompts=["a", "b"]))
    assert (record.state, record.effective) == ("Loaded", None)
    message = str(record.probe_message)
    assert message.startswith("inconclusive: base model 'base' answered 2 of 2 probe prompts differently")
    assert f"{PROBE_ROUNDS} times (first, 'a': base \" answer to 'a' #" in message
    assert "\", base again \" answer to 'a' #" in message
    assert len(fake_vllm.completions) == PROBE_ROUNDS * 2 * 3  # rounds × prompts × (base, adapter, base again)
    text = await scrape(running.url)
    assert sample(text, 'loraops_agent_probes_total{result="inconclusive"}') == 1
    assert sample(text, 'loraops_agent_failures_total{reason="ProbeInconclusive"}') == 1


@pytest.mark.asyncio
async def test_disabled_probe_sends_nothing_and_leaves_effect_unknown(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    record = await running.client.put("a", uri(folder), digest, probe=ProbeSpec(enabled=False))
    assert (record.state, record.effective, record.probe_message) == ("Loaded", None, "probe disabled")
    assert fake_vllm.completions == []


@pytest.mark.asyncio
async def test_failed_probe_keeps_the_adapter_loaded_with_effect_unknown(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    fake_vllm.fail_completions = 1
    running = await start_agent()
    record = await running.client.put("a", uri(folder), digest)
    assert (record.state, record.effective) == ("Loaded", None)
    assert str(record.probe_message).startswith("probe failed: VllmError")
    text = await scrape(running.url)
    assert sample(text, 'loraops_agent_failures_total{reason="ProbeFailed"}') == 1
    assert sample(text, 'loraops_agent_probes_total{result="failed"}') == 1


@pytest.mark.asyncio
async def test_reload_after_a_vllm_restart_probes_again(start_agent, fake_vllm, adapter) -> None:
    """The reload pre-warms too, and a vLLM that now answers like the base is noticed."""
    folder, digest = adapter
    running = await start_agent()
    assert (await running.client.put("a", uri(folder), digest)).effective is True
    await fake_vllm.restart()
    fake_vllm.answers["a"] = "base"
    await running.agent.check_vllm()
    record = running.agent.records["a"]
    assert (record.state, record.effective) == ("Loaded", False)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "probe", [{"maxTokens": 0}, {"maxTokens": 65}, {"prompts": []}, {"prompts": ["x"] * 9}, {"prompts": [""]}]
)
async def test_out_of_range_probe_spec_is_a_bad_request(start_agent, fake_vllm, adapter, probe) -> None:
    folder, digest = adapter
    running = await start_agent()
    body = {"uri": uri(folder), "digest": digest, "probe": probe}
    async with aiohttp.ClientSession() as session, session.put(f"{running.url}/v1/adapters/a", json=body) as answer:
        assert answer.status == 400
        assert (await answer.json())["reason"] == "InvalidRequest"
    assert fake_vllm.calls == []


def test_same_answer_rules() -> None:
    base = Completion(" Paris.", [-0.5, -1.0])
    assert same_answer(base, Completion(" Paris.", [-0.5, -1.0 + 1e-6]))
    assert not same_answer(base, Completion(" Paris.", [-0.5, -1.01]))
    assert not same_answer(base, Completion(" Lyon.", [-0.5, -1.0]))
    assert not same_answer(base, Completion(" Paris.", [-0.5]))
    assert same_answer(base, Completion(" Paris.", None))  # no logprobs from one side: the text decides


@pytest.mark.parametrize(
    ("adapter", "again", "verdict"),
    [
        (Completion(" Paris.", [-0.5, -1.0]), Completion(" Paris.", [-0.5, -1.0]), "same"),
        # The base held still: another text, or a logprob move above the tolerance, is an effect.
        (Completion(" Lyon.", [-0.5, -1.0]), Completion(" Paris.", [-0.5, -1.0]), "differs"),
        (Completion(" Paris.", [-0.5, -1.2]), Completion(" Paris.", [-0.5, -1.0]), "differs"),
        # The base moved a little: the adapter must move more than NOISE_FACTOR times as much.
        (Completion(" Paris.", [-0.5, -1.2]), Completion(" Paris.", [-0.5, -1.01]), "differs"),
        (Completion(" Paris.", [-0.5, -1.05]), Completion(" Paris.", [-0.5, -1.01]), "unstable"),
        # The base changed its own text: nothing can be concluded from this prompt.
        (Completion(" Lyon.", [-0.5, -1.0]), Completion(" Nice.", [-0.5, -1.0]), "unstable"),
        (Completion(" Nice.", [-0.5, -1.0]), Completion(" Nice.", [-0.5, -1.0]), "unstable"),
    ],
)
def test_judge_counts_a_difference_only_against_a_base_that_held_still(
    adapter: Completion, again: Completion, verdict: str
) -> None:
    assert judge(Completion(" Paris.", [-0.5, -1.0]), adapter, again) == verdict
