"""Canary analysis: candidate vs stable over a window, from the router's Prometheus metrics (pure).

A window is the difference between two scrapes (summed over router replicas). Counters give requests,
upstream failures and fallbacks; histograms give p95/p99 latency and time to first token by the same
interpolation as PromQL's `histogram_quantile`. During a mirror step the candidate serves no client, so its
figures come from the shadow requests instead.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from loraops.api.route import AdapterFigures, AnalysisResult, AnalysisSpec

FAILED_OUTCOMES = {"server_error", "timeout", "connect_error", "model_not_found", "stream_error"}
MIRROR_FAILED = {"error", "timeout"}

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
Snapshot = dict[SampleKey, float]
"""(sample name, sorted labels) → value, summed over router replicas."""


def parse_scrape(text: str, route: str) -> Snapshot:
    """The `loraops_router_*` samples of route `route` on one router replica's /metrics page (the other
    routes' series are never read by this route's analysis)."""
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("loraops_router_"):
            continue
        for sample in family.samples:
            if sample.labels.get("route") == route:
                snapshot[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return snapshot


def summed(replicas: Iterable[Snapshot]) -> Snapshot:
    """The replicas' samples added up, key by key."""
    total: Snapshot = defaultdict(float)
    for replica in replicas:
        for key, value in replica.items():
            total[key] += value
    return dict(total)


def window(before: Snapshot, after: Snapshot) -> Snapshot:
    """Counter deltas; a replica that restarted (value went down) counts from zero."""
    delta: Snapshot = {}
    for key, value in after.items():
        previous = before.get(key, 0.0)
        delta[key] = value - previous if value >= previous else value
    return delta


def _sum(snapshot: Snapshot, name: str, **match: str | set[str]) -> float:
    total = 0.0
    for (sample, labels), value in snapshot.items():
        if sample != name:
            continue
        label_map = dict(labels)
        if all(label_map.get(k) in v if isinstance(v, set) else label_map.get(k) == v for k, v in match.items()):
            total += value
    return total


def histogram_quantile(snapshot: Snapshot, name: str, quantile: float, **match: str) -> float | None:
    """The quantile of a histogram's window, interpolated linearly inside the bucket (as PromQL does)."""
    buckets: dict[float, float] = defaultdict(float)
    for (sample, labels), value in snapshot.items():
        if sample != f"{name}_bucket":
            continue
        label_map = dict(labels)
        if all(label_map.get(k) == v for k, v in match.items()):
            buckets[float(label_map["le"])] += value
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-1]


def figures(snapshot: Snapshot, route: str, adapter: str, *, mirror: bool = False) -> AdapterFigures:
    """What one adapter did in the window: as the primary answer, or (mirror) as the shadow."""
    if mirror:
        requests = _sum(snapshot, "loraops_router_mirror_requests_total", route=route, adapter=adapter)
        requests -= _sum(
            snapshot, "loraops_router_mirror_requests_total", route=route, adapter=adapter, outcome="dropped"
        )
        failed = _sum(
            snapshot, "loraops_router_mirror_requests_total", route=route, adapter=adapter, outcome=MIRROR_FAILED
        )
        return AdapterFigures(
            adapter=adapter,
            requests=int(requests),
            error_rate=failed / requests if requests else None,
            p95_latency_seconds=histogram_quantile(
                snapshot, "loraops_router_mirror_duration_seconds", 0.95, route=route, adapter=adapter
            ),
            p99_latency_seconds=histogram_quantile(
                snapshot, "loraops_router_mirror_duration_seconds", 0.99, route=route, adapter=adapter
            ),
        )
    requests = _sum(snapshot, "loraops_router_requests_total", route=route, adapter=adapter)
    attempts = _sum(snapshot, "loraops_router_upstream_attempts_total", route=route, adapter=adapter)
    failed = _sum(
        snapshot, "loraops_router_upstream_attempts_total", route=route, adapter=adapter, outcome=FAILED_OUTCOMES
    )
    fallbacks = _sum(snapshot, "loraops_router_fallbacks_total", route=route, adapter=adapter)
    latency = "loraops_router_request_duration_seconds"
    return AdapterFigures(
        adapter=adapter,
        requests=int(requests),
        error_rate=failed / attempts if attempts else None,
        fallback_rate=fallbacks / requests if requests else None,
        p95_latency_seconds=histogram_quantile(snapshot, latency, 0.95, route=route, adapter=adapter),
        p99_latency_seconds=histogram_quantile(snapshot, latency, 0.99, route=route, adapter=adapter),
        p95_ttft_seconds=histogram_quantile(
            snapshot, "loraops_router_time_to_first_token_seconds", 0.95, route=route, adapter=adapter
        ),
    )


def _ratio(candidate: float | None, stable: float | None) -> float | None:
    if candidate is None or stable is None or stable <= 0:
        return None
    return candidate / stable


@dataclass(frozen=True)
class Verdict:
    decision: str  # Pass | Fail | Inconclusive
    reasons: list[str]


def judge(spec: AnalysisSpec, candidate: AdapterFigures, stable: AdapterFigures | None) -> Verdict:
    """Thresholds of `spec`, candidate against stable. A breach is a breach however few requests showed it:
    waiting for more evidence of failures means sending more users to a failing adapter."""
    reasons: list[str] = []
    failed = False
    if candidate.error_rate is not None and candidate.error_rate > spec.max_error_rate:
        failed = True
        reasons.append(f"error rate {candidate.error_rate:.3f} > {spec.max_error_rate}")
    if candidate.fallback_rate is not None and candidate.fallback_rate > spec.max_fallback_rate:
        failed = True
        reasons.append(f"fallback rate {candidate.fallback_rate:.3f} > {spec.max_fallback_rate}")
    enough = candidate.requests >= spec.min_requests
    # Latency is compared only on a full window: a few slow requests are noise, not evidence.
    base = stable or AdapterFigures(adapter="", requests=0)
    comparisons: list[tuple[str, float | None, float | None, float | None]] = [
        ("p95 latency", candidate.p95_latency_seconds, base.p95_latency_seconds, spec.max_p95_latency_ratio),
        ("p99 latency", candidate.p99_latency_seconds, base.p99_latency_seconds, spec.max_p99_latency_ratio),
        ("p95 TTFT", candidate.p95_ttft_seconds, base.p95_ttft_seconds, spec.max_ttft_ratio),
    ]
    for label, mine, theirs, limit in comparisons:
        ratio = _ratio(mine, theirs)
        if enough and limit is not None and ratio is not None and ratio > limit:
            failed = True
            reasons.append(f"{label} ratio {ratio:.2f} > {limit}")
    if failed:
        return Verdict("Fail", reasons)
    if not enough:
        return Verdict("Inconclusive", [f"{candidate.requests} requests < minRequests {spec.min_requests}"])
    return Verdict("Pass", ["within every threshold"])


def result(
    spec: AnalysisSpec, step: int, candidate: AdapterFigures, stable: AdapterFigures | None, now: datetime
) -> AnalysisResult:
    verdict = judge(spec, candidate, stable)
    return AnalysisResult(
        time=now, step=step, decision=verdict.decision, candidate=candidate, stable=stable, reasons=verdict.reasons
    )
