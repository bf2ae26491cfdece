"""SSE passthrough: byte identity, chunk-by-chunk delivery, TTFT and token metrics, client disconnect."""

# ruff: noqa: SIM117  (one `async with` per layer — upstream, router, client — reads better than one long line)

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest

from tests.router.fakes import Behaviour, chat, route, router_for, run, sample, upstream, url, wait_for

pytestmark = pytest.mark.router


def table(base_url: str) -> dict[str, object]:
    return {"routes": [route("bot", base_url, backends=[("support-v2", "support-v2", 100)])]}


def test_stream_bytes_are_identical_to_upstream_and_usage_is_counted() -> None:
    async def main() -> None:
        async with upstream(behaviours={"support-v2": Behaviour(chunks=6)}) as up:
            async with router_for(table(up.url)) as router, aiohttp.ClientSession() as s:
                body = chat("bot", stream=True, stream_options={"include_usage": True})
                async with s.post(url(router), json=body) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
                    assert resp.headers["x-loraops-adapter"] == "support-v2"
                    raw = await resp.read()
                assert raw == up.stream_bytes[-1]
                assert (
                    sample(router, "loraops_router_time_to_first_token_seconds_count", {"adapter": "support-v2"}) == 1
                )
                assert sample(router, "loraops_router_tokens_total", {"kind": "completion"}) == 6
                assert sample(router, "loraops_router_tokens_total", {"kind": "prompt"}) == 7

    run(main())


def test_usage_is_requested_upstream_but_not_shown_to_a_client_that_did_not_ask() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(table(up.url)) as router, aiohttp.ClientSession() as s:
            async with s.post(url(router), json=chat("bot", stream=True)) as resp:
                raw = await resp.read()
            assert up.seen[-1].body["stream_options"] == {"include_usage": True}
            upstream_events = up.stream_bytes[-1].split(b"\n\n")
            usage_events = [e for e in upstream_events if b'"usage"' in e]
            assert len(usage_events) == 1
            # Every other byte passes unchanged.
            assert raw == b"\n\n".join(e for e in upstream_events if b'"usage"' not in e)
            assert sample(router, "loraops_router_tokens_total", {"kind": "completion"}) == 4

    run(main())


def test_chunks_reach_the_client_before_the_upstream_finishes() -> None:
    async def main() -> None:
        slow = Behaviour(chunks=5, chunk_delay_s=0.3)
        async with upstream(behaviours={"support-v2": slow}) as up:
            async with router_for(table(up.url)) as router, aiohttp.ClientSession() as s:
                async with s.post(url(router), json=chat("bot", stream=True)) as resp:
                    first = await resp.content.readuntil(b"\n\n")
                    # The first event arrived while the upstream is still producing the rest.
                    assert up.finished == 0
                    assert sample(router, "loraops_router_in_flight_requests") == 1
                    assert json.loads(first[len(b"data: ") :])["choices"][0]["delta"]["content"]
                    await resp.read()
                assert sample(router, "loraops_router_time_to_first_token_seconds_count") == 1
                await wait_for(lambda: sample(router, "loraops_router_in_flight_requests") == 0)

    run(main())


def test_client_disconnect_closes_the_upstream_request() -> None:
    async def main() -> None:
        endless = Behaviour(chunks=200, chunk_delay_s=0.05)
        async with upstream(behaviours={"support-v2": endless}) as up:
            async with router_for(table(up.url)) as router:
                async with aiohttp.ClientSession() as s, s.post(url(router), json=chat("bot", stream=True)) as resp:
                    await resp.content.readuntil(b"\n\n")
                    resp.close()  # the client goes away mid-stream
                await wait_for(lambda: up.cancelled == 1, timeout=5)
                assert up.stream_bytes == []  # the upstream never got to finish its 200 chunks
                # The router is fine afterwards.
                async with aiohttp.ClientSession() as s, s.post(url(router), json=chat("bot")) as resp:
                    assert resp.status == 200

    run(main())


def test_disconnect_while_waiting_for_a_non_streaming_answer_cancels_upstream() -> None:
    async def main() -> None:
        async with upstream(behaviours={"support-v2": Behaviour(delay_s=3.0)}) as up:
            async with router_for(table(up.url)) as router, aiohttp.ClientSession() as s:
                task = asyncio.create_task(s.post(url(router), json=chat("bot")))
                await wait_for(lambda: up.started == 1, timeout=5)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await wait_for(lambda: up.cancelled == 1, timeout=5)

    run(main())


def test_stream_broken_mid_way_ends_the_client_stream_and_counts_against_the_breaker() -> None:
    async def main() -> None:
        cut = Behaviour(chunks=6, cut_after=2)
        async with upstream(behaviours={"support-v2": cut}) as up:
            breaker = {"circuitBreaker": {"consecutiveFailures": 2, "cooldown": "60s"}}
            routes = {"routes": [route("bot", up.url, backends=[("support-v2", "support-v2", 100)], fallback=breaker)]}
            async with router_for(routes) as router, aiohttp.ClientSession() as s:
                for _ in range(2):
                    async with s.post(url(router), json=chat("bot", stream=True)) as resp:
                        assert resp.status == 200 and resp.headers["x-loraops-adapter"] == "support-v2"
                        received = b""
                        with contextlib.suppress(aiohttp.ClientPayloadError):
                            received = await resp.read()
                    # No fallback once bytes were sent, and no invented end of stream.
                    assert b"[DONE]" not in received
                assert sample(router, "loraops_router_upstream_attempts_total", {"outcome": "stream_error"}) == 2
                async with s.post(url(router), json=chat("bot", stream=True)) as resp:
                    assert resp.headers["x-loraops-fallback"] == "circuit_open"
                    assert (await resp.read()).endswith(b"data: [DONE]\n\n")

    run(main())
