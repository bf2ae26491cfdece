"""Fallback to the base model before the first byte, the circuit breaker, and `mode: error`."""

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
    is_openai_error,
    post,
    route,
    router_for,
    run,
    sample,
    upstream,
    wait_for,
)

pytestmark = pytest.mark.router


def table(base_url: str, adapter_url: str | None = None, **fallback: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"fallback": fallback} if fallback else {}
    if adapter_url is not None:
        extra["endpoints"] = {"support-v2": [adapter_url]}
    return {"routes": [route("bot", base_url, backends=[("support-v2", "support-v2", 100)], **extra)]}


@pytest.mark.parametrize("fault", ["500", "timeout", "refused", "404"])
def test_adapter_fault_falls_back_to_base_with_headers(fault: str) -> None:
    async def main() -> None:
        behaviours = {"support-v2": Behaviour(status=500)} if fault == "500" else {}
        if fault == "timeout":
            behaviours = {"support-v2": Behaviour(delay_s=5.0)}
        models = {"base-model"} if fault == "404" else None
        async with upstream(behaviours=behaviours, models=models) as up:
            adapter_url = f"http://127.0.0.1:{free_port()}" if fault == "refused" else None
            config = table(up.url, adapter_url, timeoutSeconds=0.3)
            async with router_for(config) as router, aiohttp.ClientSession() as s:
                status, headers, body = await post(s, router, chat("bot"))
                assert status == 200
                assert body["choices"][0]["message"]["content"] == "answer from base-model"
                assert headers["x-loraops-adapter"] == "base"
                reason = {
                    "500": "server_error",
                    "timeout": "timeout",
                    "refused": "connect_error",
                    "404": "model_not_found",
                }[fault]
                assert headers["x-loraops-fallback"] == reason
                # The base attempt carries the client's request unchanged but for `model`.
                base_seen = [x for x in up.seen if x.model == "base-model"]
                assert len(base_seen) == 1 and base_seen[0].body["messages"] == chat("bot")["messages"]
                assert (
                    sample(router, "loraops_router_fallbacks_total", {"adapter": "support-v2", "reason": reason}) == 1
                )
                assert (
                    sample(
                        router,
                        "loraops_router_requests_total",
                        {"adapter": "support-v2", "code": "200", "fallback": reason},
                    )
                    == 1
                )

    run(main())


def test_healthy_adapter_answers_without_fallback_header() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(table(up.url)) as router, aiohttp.ClientSession() as s:
            status, headers, body = await post(s, router, chat("bot"))
            assert status == 200 and headers["x-loraops-adapter"] == "support-v2"
            assert "x-loraops-fallback" not in headers
            assert body["model"] == "support-v2"

    run(main())


def test_client_errors_are_relayed_not_retried() -> None:
    async def main() -> None:
        async with upstream(behaviours={"support-v2": Behaviour(status=422)}) as up:
            async with router_for(table(up.url)) as router, aiohttp.ClientSession() as s:
                status, headers, body = await post(s, router, chat("bot"))
                assert status == 422 and is_openai_error(body)
                assert "x-loraops-fallback" not in headers
                assert up.count("base-model") == 0

    run(main())


def test_no_client_failure_over_500_requests_with_30_percent_failing_adapter() -> None:
    async def main() -> None:
        # 3 of every 10 adapter requests fail; the breaker must not hide the failures from this test, so it
        # only opens on a long run of failures the pattern never produces.
        behaviours = {"support-v2": Behaviour(fail_pattern=(3, 10))}
        async with upstream(behaviours=behaviours) as up:
            config = table(up.url, circuitBreaker={"consecutiveFailures": 50})
            async with router_for(config) as router, aiohttp.ClientSession() as s:
                results = await gather_limited(
                    [post(s, router, chat("bot"), headers={"X-User-Id": f"u{i}"}) for i in range(500)], limit=25
                )
                assert [r[0] for r in results].count(200) == 500
                fallbacks = [r for r in results if r[1].get("x-loraops-fallback") == "server_error"]
                assert len(fallbacks) == 150
                assert all(r[2]["model"] == "base-model" for r in fallbacks)
                assert (
                    sample(
                        router,
                        "loraops_router_upstream_attempts_total",
                        {"adapter": "support-v2", "outcome": "server_error"},
                    )
                    == 150
                )

    run(main())


def test_breaker_opens_sends_to_base_then_half_opens_and_closes() -> None:
    async def main() -> None:
        failing = Behaviour(status=500)
        async with upstream(behaviours={"support-v2": failing}) as up:
            config = table(up.url, circuitBreaker={"consecutiveFailures": 3, "cooldown": "300ms", "halfOpenProbes": 2})
            async with router_for(config) as router, aiohttp.ClientSession() as s:
                for _ in range(3):
                    _, headers, _ = await post(s, router, chat("bot"))
                    assert headers["x-loraops-fallback"] == "server_error"
                assert sample(router, "loraops_router_circuit_state", {"adapter": "support-v2"}) == 1
                # Open: the adapter gets no traffic at all, base answers.
                tried = up.count("support-v2")
                for _ in range(10):
                    status, headers, body = await post(s, router, chat("bot"))
                    assert (status, headers["x-loraops-fallback"], body["model"]) == (200, "circuit_open", "base-model")
                assert up.count("support-v2") == tried
                # Still failing after the cooldown: the probe fails and the breaker opens again.
                await wait_for(lambda: router.breakers[("bot", "support-v2")].cooldown_over(), timeout=5)
                _, headers, _ = await post(s, router, chat("bot"))
                assert headers["x-loraops-fallback"] == "server_error"
                assert up.count("support-v2") == tried + 1
                assert sample(router, "loraops_router_circuit_state", {"adapter": "support-v2"}) == 1
                # Healthy again: after the cooldown two probes succeed and the breaker closes.
                failing.status = 200
                await wait_for(lambda: router.breakers[("bot", "support-v2")].cooldown_over(), timeout=5)
                for _ in range(2):
                    _, headers, body = await post(s, router, chat("bot"))
                    assert "x-loraops-fallback" not in headers and body["model"] == "support-v2"
                assert sample(router, "loraops_router_circuit_state", {"adapter": "support-v2"}) == 0
                for state in ("open", "half-open", "closed"):
                    assert sample(router, "loraops_router_circuit_transitions_total", {"state": state}) >= 1

    run(main())


def test_breaker_opens_on_error_rate_over_window() -> None:
    async def main() -> None:
        # Alternating failures never make 5 in a row, but 50% is over the 20% allowed.
        async with upstream(behaviours={"support-v2": Behaviour(fail_pattern=(1, 2))}) as up:
            breaker = {"consecutiveFailures": 5, "maxErrorRate": 0.2, "window": "30s", "cooldown": "60s"}
            async with router_for(table(up.url, circuitBreaker=breaker)) as router, aiohttp.ClientSession() as s:
                reasons = [(await post(s, router, chat("bot")))[1].get("x-loraops-fallback") for _ in range(12)]
                assert "circuit_open" in reasons
                assert reasons.index("circuit_open") >= 5  # needs a minimum of requests in the window

    run(main())


def test_error_mode_returns_openai_errors_and_breaker_503() -> None:
    async def main() -> None:
        async with upstream(behaviours={"support-v2": Behaviour(status=500)}) as up:
            config = table(up.url, mode="error", circuitBreaker={"consecutiveFailures": 2, "cooldown": "60s"})
            async with router_for(config) as router, aiohttp.ClientSession() as s:
                for _ in range(2):
                    status, headers, body = await post(s, router, chat("bot"))
                    assert status == 500 and is_openai_error(body)
                    assert headers["x-loraops-adapter"] == "support-v2" and "x-loraops-fallback" not in headers
                status, headers, body = await post(s, router, chat("bot"))
                assert status == 503 and is_openai_error(body) and body["error"]["code"] == "circuit_open"
                assert up.count("base-model") == 0
                # Counted like every request, under the adapter that failed, and never as a fallback.
                counted = {"adapter": "support-v2", "code": "500"}
                assert sample(router, "loraops_router_requests_total", counted) == 2
                assert sample(router, "loraops_router_requests_total", {"adapter": "support-v2", "code": "503"}) == 1
                assert sample(router, "loraops_router_fallbacks_total") == 0

        async with router_for(table(f"http://127.0.0.1:{free_port()}", mode="error")) as router:
            async with aiohttp.ClientSession() as s:
                status, _, body = await post(s, router, chat("bot"))
                assert status == 502 and body["error"]["code"] == "connect_error"

    run(main())


def test_base_failure_after_fallback_is_reported_not_hidden() -> None:
    async def main() -> None:
        behaviours = {"support-v2": Behaviour(status=500), "base-model": Behaviour(status=503)}
        async with upstream(behaviours=behaviours) as up, router_for(table(up.url)) as router:
            async with aiohttp.ClientSession() as s:
                status, headers, body = await post(s, router, chat("bot"))
                assert status == 503 and is_openai_error(body)
                assert headers["x-loraops-adapter"] == "base" and headers["x-loraops-fallback"] == "server_error"

    run(main())


def test_streaming_request_falls_back_before_first_byte() -> None:
    async def main() -> None:
        async with upstream(behaviours={"support-v2": Behaviour(status=500)}) as up:
            async with router_for(table(up.url)) as router, aiohttp.ClientSession() as s:
                async with s.post(
                    f"http://127.0.0.1:{router.port}/v1/chat/completions", json=chat("bot", stream=True)
                ) as resp:
                    raw = await resp.read()
                    assert resp.status == 200 and resp.headers["x-loraops-fallback"] == "server_error"
                assert b"answer" in raw and b'"model": "base-model"' in raw and raw.endswith(b"data: [DONE]\n\n")

    run(main())
