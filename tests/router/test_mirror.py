"""Shadow traffic: off the client's path, bounded, measured, compared."""

# ruff: noqa: SIM117  (one `async with` per layer — upstream, router, client — reads better than one long line)

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from loraops.devmode.vllm import free_port
from tests.router.fakes import (
    Behaviour,
    chat,
    gather_limited,
    post,
    route,
    router_for,
    run,
    sample,
    upstream,
    wait_for,
)

pytestmark = pytest.mark.router


def mirrored(base_url: str, percent: int = 100, shadow_url: str | None = None) -> dict[str, Any]:
    entry = {
        "backends": [{"adapter": "stable", "servedName": "stable", "weight": 100}],
        "mirror": {"adapter": "shadow", "servedName": "shadow", "percent": percent},
    }
    extra: dict[str, Any] = {"endpoints": {"shadow": [shadow_url]}} if shadow_url else {}
    return {"routes": [route("bot", base_url, entries=[entry], **extra)]}


def test_slow_shadow_does_not_delay_the_primary_answer() -> None:
    async def main() -> None:
        async with upstream(behaviours={"shadow": Behaviour(delay_s=2.0)}) as up:
            async with router_for(mirrored(up.url)) as router, aiohttp.ClientSession() as s:
                status, headers, _ = await post(s, router, chat("bot", stream=True))
                # The primary answer is complete while the shadow copy is still being answered.
                assert status == 200 and headers["x-loraops-adapter"] == "stable"
                assert up.count("shadow") == 1 and up.finished == 1
                shadow = next(x for x in up.seen if x.model == "shadow")
                assert "stream" not in shadow.body and "stream_options" not in shadow.body
                assert shadow.body["messages"] == chat("bot")["messages"]
                await wait_for(lambda: sample(router, "loraops_router_mirror_requests_total", {"outcome": "ok"}) == 1)
                assert sample(router, "loraops_router_mirror_duration_seconds_count", {"adapter": "shadow"}) == 1
                assert sample(router, "loraops_router_mirror_tokens_total", {"kind": "completion"}) == 5

    run(main())


@pytest.mark.parametrize("fault", ["500", "refused"])
def test_failing_shadow_causes_no_client_error_and_is_counted(fault: str) -> None:
    async def main() -> None:
        async with upstream(behaviours={"shadow": Behaviour(status=500)}) as up:
            shadow_url = f"http://127.0.0.1:{free_port()}" if fault == "refused" else None
            async with router_for(mirrored(up.url, shadow_url=shadow_url)) as router, aiohttp.ClientSession() as s:
                results = await gather_limited([post(s, router, chat("bot")) for _ in range(20)], limit=10)
                assert {r[0] for r in results} == {200}
                assert all("x-loraops-fallback" not in r[1] for r in results)
                errors = {"outcome": "error"}
                await wait_for(lambda: sample(router, "loraops_router_mirror_requests_total", errors) == 20)
                assert sample(router, "loraops_router_requests_total", {"code": "200"}) == 20

    run(main())


def test_full_mirror_queue_drops_copies_with_a_metric() -> None:
    async def main() -> None:
        async with upstream(behaviours={"shadow": Behaviour(delay_s=1.0)}) as up:
            async with router_for(mirrored(up.url), mirror_queue=2, mirror_concurrency=1) as router:
                async with aiohttp.ClientSession() as s:
                    results = await gather_limited([post(s, router, chat("bot")) for _ in range(12)], limit=12)
                    assert {r[0] for r in results} == {200}
                    dropped = sample(router, "loraops_router_mirror_requests_total", {"outcome": "dropped"})
                    # Two queued and at most one taken by the worker: the others are dropped, never waited for.
                    assert 9 <= dropped <= 10
                    assert up.count("shadow") <= 3

    run(main())


def test_shadow_answer_is_compared_with_the_primary() -> None:
    async def main() -> None:
        behaviours = {"shadow": Behaviour(answer="answer from stable and then some")}
        async with upstream(behaviours=behaviours) as up, router_for(mirrored(up.url)) as router:
            async with aiohttp.ClientSession() as s:
                await post(s, router, chat("bot"))
                await wait_for(lambda: sample(router, "loraops_router_mirror_comparisons_total") == 1)
                assert sample(router, "loraops_router_mirror_comparisons_total", {"match": "false"}) == 1
                ratio_sum = sample(router, "loraops_router_mirror_length_ratio_sum")
                assert ratio_sum == pytest.approx(len("answer from stable and then some") / len("answer from stable"))
        async with upstream(behaviours={"shadow": Behaviour(answer="answer from stable")}) as up:
            async with router_for(mirrored(up.url)) as router, aiohttp.ClientSession() as s:
                await post(s, router, chat("bot"))
                same = {"match": "true"}
                await wait_for(lambda: sample(router, "loraops_router_mirror_comparisons_total", same) == 1)

    run(main())


def test_mirror_percent_samples_a_share_of_requests() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(mirrored(up.url, percent=25)) as router, aiohttp.ClientSession() as s:
            await gather_limited([post(s, router, chat("bot")) for _ in range(400)], limit=20)
            await wait_for(lambda: sample(router, "loraops_router_mirror_requests_total") == up.count("shadow"))
            # Binomial(400, 0.25): sd ≈ 8.7; 5 sd.
            assert abs(up.count("shadow") - 100) <= 44

    run(main())


def test_streamed_primary_is_compared_with_the_shadow_too() -> None:
    async def main() -> None:
        # The primary streams "answer from stable" in 4 events; the shadow answers the same text at once.
        behaviours = {"shadow": Behaviour(answer="answer from stable")}
        async with upstream(behaviours=behaviours) as up, router_for(mirrored(up.url)) as router:
            async with aiohttp.ClientSession() as s:
                await post(s, router, chat("bot", stream=True))
                same = {"match": "true"}
                await wait_for(lambda: sample(router, "loraops_router_mirror_comparisons_total", same) == 1)
                assert sample(router, "loraops_router_mirror_length_ratio_sum") == 1.0

    run(main())
