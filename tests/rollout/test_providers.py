"""Analysis providers against real HTTP: a stand-in Prometheus answering PromQL instant queries, and router
/metrics pages scraped by the built-in provider."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from loraops.api.route import AnalysisSpec
from loraops.routing.analysis import figures, judge, summed, window
from loraops.routing.providers import PROMQL, BuiltinProvider, PrometheusProvider, open_circuits

pytestmark = pytest.mark.rollout


def vector(query: str, scale: float) -> list[dict[str, Any]]:
    """What Prometheus would answer for one of PROMQL's queries about route `bot` (candidate v2, stable v1)."""
    rows: list[dict[str, Any]] = []
    if "upstream_attempts" in query:
        rows = [
            {"metric": {"route": "bot", "adapter": "v1", "outcome": "ok"}, "value": [0, str(100 * scale)]},
            {"metric": {"route": "bot", "adapter": "v2", "outcome": "ok"}, "value": [0, str(70 * scale)]},
            {"metric": {"route": "bot", "adapter": "v2", "outcome": "server_error"}, "value": [0, str(30 * scale)]},
        ]
    elif "requests_total" in query and "mirror" not in query:
        rows = [
            {"metric": {"route": "bot", "adapter": "v1"}, "value": [0, str(100 * scale)]},
            {"metric": {"route": "bot", "adapter": "v2"}, "value": [0, str(100 * scale)]},
        ]
    elif "circuit_state" in query:
        rows = [{"metric": {"route": "bot", "adapter": "v2"}, "value": [0, "1"]}]
    return rows


def test_prometheus_provider_queries_every_series_and_feeds_the_same_analysis() -> None:
    queries: list[str] = []

    async def scenario() -> tuple[Any, Any]:
        scale = {"value": 1.0}

        async def query(request: web.Request) -> web.Response:
            q = request.query["query"]
            queries.append(q)
            return web.json_response(
                {"status": "success", "data": {"resultType": "vector", "result": vector(q, scale["value"])}}
            )

        app = web.Application()
        app.router.add_get("/api/v1/query", query)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        provider = PrometheusProvider(f"http://127.0.0.1:{port}")
        before = await provider.replicas("bot")
        scale["value"] = 2.0
        after = await provider.replicas("bot")
        await runner.cleanup()
        return before, after

    before, after = asyncio.run(scenario())
    assert len(queries) == 2 * len(PROMQL)
    assert all('{route="bot"}' in q for q in queries)
    delta = window(before[0], after[0])
    candidate = figures(delta, "bot", "v2")
    assert candidate.requests == 100 and candidate.error_rate == pytest.approx(0.3)
    verdict = judge(AnalysisSpec(), candidate, figures(delta, "bot", "v1"))
    assert verdict.decision == "Fail" and "error rate" in verdict.reasons[0]
    assert open_circuits(after, "bot") == frozenset({"v2"})


def test_builtin_provider_scrapes_each_replica_and_skips_an_unreachable_one() -> None:
    page = (
        "# TYPE loraops_router_requests_total counter\n"
        'loraops_router_requests_total{route="bot",adapter="v2",tenant="acme",code="200",fallback="none"} 7\n'
        "# TYPE loraops_router_circuit_state gauge\n"
        'loraops_router_circuit_state{route="bot",adapter="v2"} 0\n'
    )

    async def scenario() -> list[Any]:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/metrics"
        replicas = await BuiltinProvider([url, url, "http://127.0.0.1:1/metrics"], timeout=2).replicas("bot")
        await runner.cleanup()
        return replicas

    replicas = asyncio.run(scenario())
    assert len(replicas) == 2, "two replicas answered, the third is skipped"
    assert figures(window({}, summed(replicas)), "bot", "v2").requests == 14
    assert open_circuits(replicas, "bot") == frozenset()


def test_pod_url_annotation_is_honoured_only_in_dev_mode() -> None:
    from loraops.config import OperatorConfig
    from loraops.routing.handlers import RouteController

    pod = {"metadata": {"annotations": {"loraops.io/vllm-url": "http://evil:1"}}, "status": {"podIP": "10.0.0.7"}}
    cluster = RouteController(client=None, config=OperatorConfig(vllm_port=8000))  # type: ignore[arg-type]
    dev = RouteController(client=None, config=OperatorConfig(agent_url_annotation=True))  # type: ignore[arg-type]
    assert cluster.pod_url(pod) == "http://10.0.0.7:8000", "whoever may annotate a pod must not redirect traffic"
    assert dev.pod_url(pod) == "http://evil:1"
