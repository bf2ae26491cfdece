"""Sticky weighted selection through the router: split, stickiness, and monotone canary growth."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import aiohttp
import pytest

from loraops.api.route import RouteTable
from loraops.router.table import compile_table, key_hash
from tests.router.fakes import Behaviour, chat, gather_limited, post, route, router_for, run, upstream, wait_for

pytestmark = pytest.mark.router


def canary_table(base_url: str, canary_weight: int) -> RouteTable:
    backends = [("stable", "stable-v1", 100 - canary_weight), ("canary", "canary-v2", canary_weight)]
    return RouteTable.model_validate({"routes": [route("bot", base_url, backends=backends)]})


async def adapters_of(session: aiohttp.ClientSession, router: object, users: list[str]) -> dict[str, str]:
    async def one(user: str) -> tuple[str, str]:
        status, headers, body = await post(session, router, chat("bot"), headers={"X-User-Id": user})  # type: ignore[arg-type]
        assert status == 200, body
        # The upstream saw the served name the router chose, and says so in its answer.
        assert body["choices"][0]["message"]["content"] == f"answer from {body['model']}"
        return user, headers["x-loraops-adapter"]

    return dict(await gather_limited([one(u) for u in users], limit=50))


def test_weighted_split_over_2000_users_is_within_tolerance() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(canary_table(up.url, 30)) as router, aiohttp.ClientSession() as s:
            chosen = await adapters_of(s, router, [f"user-{i}" for i in range(2000)])
            counts = Counter(chosen.values())
            # Binomial(2000, 0.3): sd ≈ 20.5; 4 sd keeps a correct router from failing by chance.
            assert abs(counts["canary"] - 600) <= 4 * math.sqrt(2000 * 0.3 * 0.7), counts
            assert counts["canary"] + counts["stable"] == 2000
            assert up.count("canary-v2") == counts["canary"]
            assert up.count("stable-v1") == counts["stable"]

    run(main())


def test_one_user_stays_on_one_adapter_across_100_requests() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(canary_table(up.url, 50)) as router, aiohttp.ClientSession() as s:
            for user in ("alice", "bob", "carol", "dave"):
                seen = set()
                for _ in range(100):
                    _, headers, _ = await post(s, router, chat("bot"), headers={"X-User-Id": user})
                    seen.add(headers["x-loraops-adapter"])
                assert len(seen) == 1, (user, seen)
            # The body's `user` field is the key when no header is sent.
            by_body = {(await post(s, router, chat("bot", user="erin")))[1]["x-loraops-adapter"] for _ in range(50)}
            assert len(by_body) == 1

    run(main())


def test_raising_canary_from_10_to_20_percent_moves_no_user_back_to_stable() -> None:
    async def main() -> None:
        users = [f"u{i}" for i in range(1000)]
        async with upstream() as up, router_for(canary_table(up.url, 10)) as router, aiohttp.ClientSession() as s:
            before = await adapters_of(s, router, users)
            router.publish(canary_table(up.url, 20))
            after = await adapters_of(s, router, users)
        moved_back = [u for u in users if before[u] == "canary" and after[u] == "stable"]
        assert moved_back == []
        canary_before = sum(1 for a in before.values() if a == "canary")
        canary_after = sum(1 for a in after.values() if a == "canary")
        assert 50 <= canary_before <= 150 and canary_after > canary_before + 50, (canary_before, canary_after)

    run(main())


@pytest.mark.parametrize("steps", [(1, 5, 10, 25, 50, 75, 100), (0, 30, 31, 90)])
def test_monotone_for_every_weight_step_and_backend_order(steps: tuple[int, ...]) -> None:
    keys = [key_hash(f"k{i}") for i in range(3000)]
    previous: list[str] | None = None
    for i, weight in enumerate(steps):
        backends = [
            {"adapter": "stable", "servedName": "stable", "weight": 100 - weight},
            {"adapter": "canary", "servedName": "canary", "weight": weight},
        ]
        if i % 2:
            backends.reverse()  # the list order must not matter
        table = RouteTable.model_validate(
            {
                "routes": [
                    {
                        "model": "m",
                        "baseUrl": "http://b",
                        "baseServedModel": "base",
                        "entries": [{"backends": backends}],
                    }
                ]
            }
        )
        entry = compile_table(table).routes["m"].default
        assert entry is not None
        chosen = [entry.select(k).adapter for k in keys]
        if weight == 0:
            assert "canary" not in chosen
        if weight == 100:
            assert set(chosen) == {"canary"}
        if previous is not None:
            assert not any(p == "canary" and c == "stable" for p, c in zip(previous, chosen, strict=True))
        previous = chosen


def test_three_way_split_and_zero_weight() -> None:
    table = RouteTable.model_validate(
        {"routes": [route("m", "http://b", backends=[("a", "a", 50), ("b", "b", 30), ("c", "c", 20), ("d", "d", 0)])]}
    )
    entry = compile_table(table).routes["m"].default
    assert entry is not None
    counts = Counter(entry.select(key_hash(f"x{i}")).adapter for i in range(20000))
    assert counts["d"] == 0
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        sd = math.sqrt(20000 * share * (1 - share))
        assert abs(counts[name] - 20000 * share) <= 4 * sd, counts


def test_upstream_is_the_pod_with_fewest_outstanding_requests() -> None:
    async def main() -> None:
        async with upstream(behaviours={"v1": Behaviour(delay_s=1.0)}) as slow, upstream() as fast:
            table = {"routes": [route("bot", slow.url, backends=[("v1", "v1", 100)],
                                      endpoints={"v1": [slow.url, fast.url]})]}
            async with router_for(table) as router, aiohttp.ClientSession() as s:
                stuck = asyncio.create_task(post(s, router, chat("bot")))
                # With nothing outstanding anywhere, the first listed pod gets the request.
                await wait_for(lambda: slow.started == 1)
                for _ in range(10):
                    assert (await post(s, router, chat("bot")))[0] == 200
                assert (await stuck)[0] == 200
                # Every request that came while the slow pod was busy went to the idle one.
                assert (slow.count("v1"), fast.count("v1")) == (1, 10)

    run(main())
