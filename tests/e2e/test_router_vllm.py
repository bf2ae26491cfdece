"""The router in front of the real vLLM CPU server with two real adapters loaded at runtime."""

from __future__ import annotations

import json
import math
import pathlib
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.e2e.adapters import make_adapter
from tests.router.fakes import gather_limited, post, route, router_for, run, sample, url

pytestmark = [pytest.mark.e2e, pytest.mark.router]

PROMPT = "what is the capital of"


@pytest.fixture(scope="module")
def adapters(vllm_server: Any, tiny_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two adapters loaded through vLLM's runtime API, with the greedy answer of each (and of the base)."""
    folder = tmp_path_factory.mktemp("adapters")
    for name, seed in (("support-a", 1), ("support-b", 2)):
        path = make_adapter(tiny_model, folder / name, seed)
        vllm_server.request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
    assert {"support-a", "support-b"} <= set(vllm_server.models())
    answers = {
        name: vllm_server.complete(name, PROMPT, max_tokens=8)["choices"][0]["text"]
        for name in ("tiny-llama", "support-a", "support-b")
    }
    # Without this the test could not tell who answered.
    assert len(set(answers.values())) == 3, answers
    return answers


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": "bot", "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, **extra}


def table(vllm_url: str, **extra: Any) -> dict[str, Any]:
    backends = [("support-a", "support-a", 70), ("support-b", "support-b", 30)]
    return {"routes": [route("bot", vllm_url, base="tiny-llama", backends=backends, **extra)]}


def test_weights_stickiness_and_adapter_answers_through_the_router(vllm_server: Any, adapters: dict[str, str]) -> None:
    async def main() -> None:
        async with router_for(table(vllm_server.url)) as router, aiohttp.ClientSession() as s:

            async def one(user: str) -> tuple[str, str, str]:
                status, headers, body = await post(s, router, completion(), path="/v1/completions",
                                                   headers={"X-User-Id": user})
                assert status == 200, body
                chosen = headers["x-loraops-adapter"]
                assert body["model"] == chosen  # vLLM echoes the name it served: the adapter, not the route
                return user, chosen, body["choices"][0]["text"]

            results = await gather_limited([one(f"user-{i}") for i in range(300)], limit=8)
            chosen = {user: adapter for user, adapter, _ in results}
            counts = Counter(chosen.values())
            assert abs(counts["support-a"] - 210) <= 4 * math.sqrt(300 * 0.7 * 0.3), counts
            # One at a time (as the reference answers were computed, so batching cannot change a near-tie):
            # each user stays on its adapter and gets that adapter's own greedy answer.
            users = [next(u for u, a in chosen.items() if a == name) for name in ("support-a", "support-b")]
            for user in [*users, "user-7", "user-8"]:
                for _ in range(5):
                    _, adapter, text = await one(user)
                    assert adapter == chosen[user]
                    assert text == adapters[adapter], (adapter, text)
            assert sample(router, "loraops_router_tokens_total", {"kind": "completion"}) > 0

    run(main(), timeout=240)


def test_adapter_missing_in_vllm_falls_back_to_the_base_answer(vllm_server: Any, adapters: dict[str, str]) -> None:
    async def main() -> None:
        ghost = {"routes": [route("bot", vllm_server.url, base="tiny-llama", backends=[("ghost", "ghost", 100)])]}
        async with router_for(ghost) as router, aiohttp.ClientSession() as s:
            status, headers, body = await post(s, router, completion(), path="/v1/completions")
            assert status == 200
            assert (headers["x-loraops-adapter"], headers["x-loraops-fallback"]) == ("base", "model_not_found")
            assert body["choices"][0]["text"] == adapters["tiny-llama"]

    run(main(), timeout=120)


def test_streaming_from_vllm_passes_events_and_counts_tokens(vllm_server: Any, adapters: dict[str, str]) -> None:
    async def main() -> None:
        async with router_for(table(vllm_server.url)) as router, aiohttp.ClientSession() as s:
            body = completion(stream=True)
            async with s.post(url(router, "/v1/completions"), json=body, headers={"X-User-Id": "u"}) as resp:
                assert resp.status == 200
                chosen = resp.headers["x-loraops-adapter"]
                raw = await resp.read()
            events = [e for e in raw.split(b"\n\n") if e]
            assert events[-1] == b"data: [DONE]"
            chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
            # The usage chunk the router asked vLLM for is not shown to a client that did not ask.
            assert all(c["choices"] for c in chunks)
            assert "".join(c["choices"][0]["text"] for c in chunks) == adapters[chosen]
            assert sample(router, "loraops_router_tokens_total", {"adapter": chosen, "kind": "completion"}) > 0
            assert sample(router, "loraops_router_time_to_first_token_seconds_count", {"adapter": chosen}) == 1

    run(main(), timeout=120)
