"""Prometheus metrics of the router, all named `loraops_router_*`.

Each router owns its registry (several routers can live in one test process). Label children are cached per
label tuple: `labels()` takes a lock and builds a key on every call, which the hot path does not need.
The `tenant` label only takes tenants the route table or the API-key file names; anything else is `other`
(and requests without a tenant are `none`), so a client cannot grow the series count by inventing tenants.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)

OTHER_TENANT = "other"
NO_TENANT = "none"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "loraops_router_requests",
            "Client requests by route, selected adapter, tenant, status code and fallback reason (none if none).",
            ["route", "adapter", "tenant", "code", "fallback"],
            registry=r,
        )
        self.duration = Histogram(
            "loraops_router_request_duration_seconds",
            "Time from request received to response complete, by route and the adapter that answered.",
            ["route", "adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "loraops_router_time_to_first_token_seconds",
            "Time from request received to the first response byte sent (streams: the first SSE event).",
            ["route", "adapter"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "loraops_router_tokens",
            "Tokens from upstream `usage`, by route, answering adapter and kind (prompt, completion).",
            ["route", "adapter", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            "loraops_router_fallbacks",
            "Requests the base model answered instead of the selected adapter, by reason.",
            ["route", "adapter", "reason"],
            registry=r,
        )
        self.upstream = Counter(
            "loraops_router_upstream_attempts",
            "Upstream attempts by route, adapter and outcome (ok, client_error, server_error, timeout, "
            "connect_error, model_not_found, stream_error).",
            ["route", "adapter", "outcome"],
            registry=r,
        )
        self.mirror = Counter(
            "loraops_router_mirror_requests",
            "Shadow requests by route, shadow adapter and outcome (ok, error, timeout, dropped).",
            ["route", "adapter", "outcome"],
            registry=r,
        )
        self.mirror_duration = Histogram(
            "loraops_router_mirror_duration_seconds",
            "Shadow request latency.",
            ["route", "adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mirror_tokens = Counter(
            "loraops_router_mirror_tokens",
            "Tokens of shadow answers, by kind (prompt, completion).",
            ["route", "adapter", "kind"],
            registry=r,
        )
        self.mirror_match = Counter(
            "loraops_router_mirror_comparisons",
            "Shadow answers compared with the primary answer: exact text match true/false.",
            ["route", "adapter", "match"],
            registry=r,
        )
        self.mirror_length_ratio = Histogram(
            "loraops_router_mirror_length_ratio",
            "Length of the shadow answer text over the primary's.",
            ["route", "adapter"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.circuit_state = Gauge(
            "loraops_router_circuit_state",
            "Circuit breaker state per route and adapter: 0 closed, 1 open, 2 half-open.",
            ["route", "adapter"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "loraops_router_circuit_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["route", "adapter", "state"],
            registry=r,
        )
        self.in_flight = Gauge("loraops_router_in_flight_requests", "Client requests in progress.", registry=r)
        self.routes = Gauge("loraops_router_routes", "Routes in the active table.", registry=r)
        self.reloads = Counter(
            "loraops_router_table_reloads", "Route table loads by result (ok, error).", ["result"], registry=r
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
