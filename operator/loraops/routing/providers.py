"""Where analysis reads the router's metrics: a small interface, one class per provider.

Both return per-replica samples of the `loraops_router_*` series; `analysis.window` turns two of them into
the figures of a window. The built-in provider scrapes every router replica's /metrics page; the Prometheus
provider asks a Prometheus server for the same series, summed by the labels analysis uses:

    sum by (route, adapter, outcome) (loraops_router_upstream_attempts_total{route="<model>"})
    sum by (route, adapter) (loraops_router_requests_total{route="<model>"})
    sum by (route, adapter) (loraops_router_fallbacks_total{route="<model>"})
    sum by (route, adapter, outcome) (loraops_router_mirror_requests_total{route="<model>"})
    sum by (route, adapter, le) (loraops_router_request_duration_seconds_bucket{route="<model>"})
    sum by (route, adapter, le) (loraops_router_time_to_first_token_seconds_bucket{route="<model>"})
    sum by (route, adapter, le) (loraops_router_mirror_duration_seconds_bucket{route="<model>"})
    max by (route, adapter) (loraops_router_circuit_state{route="<model>"})
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import aiohttp

from .analysis import Snapshot, parse_scrape

log = logging.getLogger(__name__)

PROMQL = {
    "loraops_router_upstream_attempts_total": "sum by (route, adapter, outcome)",
    "loraops_router_requests_total": "sum by (route, adapter)",
    "loraops_router_fallbacks_total": "sum by (route, adapter)",
    "loraops_router_mirror_requests_total": "sum by (route, adapter, outcome)",
    "loraops_router_request_duration_seconds_bucket": "sum by (route, adapter, le)",
    "loraops_router_time_to_first_token_seconds_bucket": "sum by (route, adapter, le)",
    "loraops_router_mirror_duration_seconds_bucket": "sum by (route, adapter, le)",
    "loraops_router_circuit_state": "max by (route, adapter)",
}


class MetricsProvider(Protocol):
    async def replicas(self, model: str) -> list[Snapshot]:
        """One snapshot per router replica (or one already summed), of the series of route `model`."""
        ...


class BuiltinProvider:
    """Scrapes each router replica's /metrics. Unreachable replicas are skipped (and logged)."""

    def __init__(self, urls: list[str], timeout: float = 5.0) -> None:
        self.urls = urls
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def replicas(self, model: str) -> list[Snapshot]:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            pages = await asyncio.gather(*(self._scrape(session, url) for url in self.urls))
        return [parse_scrape(page, model) for page in pages if page is not None]

    async def _scrape(self, session: aiohttp.ClientSession, url: str) -> str | None:
        try:
            async with session.get(url) as response:
                response.raise_for_status()
                return await response.text()
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("cannot scrape router metrics at %s: %s", url, err)
            return None


class PrometheusProvider:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def replicas(self, model: str) -> list[Snapshot]:
        snapshot: Snapshot = {}
        selector = '{route="' + model.replace("\\", "\\\\").replace('"', '\\"') + '"}'
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            for series, aggregation in PROMQL.items():
                query = f"{aggregation} ({series}{selector})"
                async with session.get(f"{self.url}/api/v1/query", params={"query": query}) as response:
                    response.raise_for_status()
                    body = await response.json()
                for item in body.get("data", {}).get("result", []):
                    labels = tuple(sorted(item["metric"].items()))
                    snapshot[(series, labels)] = float(item["value"][1])
        return [snapshot]


def open_circuits(replicas: list[Snapshot], model: str) -> frozenset[str]:
    """Adapters whose breaker any replica reports open (1)."""
    return frozenset(
        dict(labels)["adapter"]
        for replica in replicas
        for (name, labels), value in replica.items()
        if name == "loraops_router_circuit_state" and value == 1 and dict(labels).get("route") == model
    )
