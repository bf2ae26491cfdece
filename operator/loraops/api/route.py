"""`AdapterRoute`: which adapter answers a model name, per tenant, and how traffic moves between versions.

`status.traffic` is the effective traffic table: exactly what the router (`loraops router --kube`) serves.
The same `RouteTraffic` type is what a routes file (`loraops router --routes FILE`) contains.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue, StringConstraints

from .common import ApiModel, Conditions, Duration, LabelName, ModelName, ObjectName, TenantId

STEP_RULES: list[JsonValue] = [
    {
        "rule": "(has(self.pause) ? 1 : 0) + (has(self.cohort) ? 1 : 0)"
        " + ((has(self.weight) || has(self.mirror)) ? 1 : 0) == 1",
        "message": "a step is exactly one of: pause, cohort, or weight (optionally with mirror)",
    },
    {
        "rule": "!(has(self.weight) && has(self.mirror)) || self.weight + self.mirror.percent <= 100",
        "message": "step weights sum to more than 100: weight + mirror.percent must be at most 100"
        " (the mirror copies part of the traffic still on stable)",
        "fieldPath": ".weight",
    },
]
PROVIDER_RULES: list[JsonValue] = [
    {
        "rule": "self.type != 'prometheus' || has(self.url)",
        "message": "analysis.provider.url is required when analysis.provider.type is prometheus",
        "fieldPath": ".url",
    },
]

Percent = Annotated[int, Field(ge=0, le=100)]


class BaseRoute(ApiModel):
    """The base model: where traffic goes when no adapter should (or can) answer."""

    deployment: ObjectName
    """The vLLM Deployment."""
    service: ObjectName
    """The Service in front of it."""
    served_model: Annotated[ModelName, StringConstraints(min_length=1)]
    """The base model's name as vLLM serves it."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """The Service's HTTP port."""


class TenantRule(ApiModel):
    """Send these tenants to their own adapter (rolled out by the same strategy)."""

    tenants: Annotated[list[TenantId], Field(min_length=1, max_length=256)]
    adapter: LabelName
    """The LoraAdapter these tenants should get."""


class MirrorStep(ApiModel):
    """Copy a share of the stable traffic to the candidate; clients only ever see the stable answer."""

    percent: Annotated[int, Field(ge=1, le=100)]


class CohortStep(ApiModel):
    """Send all traffic of these tenants to the candidate; others are untouched."""

    tenants: Annotated[list[TenantId], Field(min_length=1, max_length=256)]


class PauseStep(ApiModel):
    """Hold the current traffic. Without a duration, wait for the annotation `loraops.io/promote: "true"`."""

    duration: Duration | None = None


class Step(ApiModel):
    """One canary step: `mirror`, `cohort`, `weight` (optionally with `mirror`), or `pause`.
    Analysis runs at the end of every step and continuously while in it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": STEP_RULES})

    mirror: MirrorStep | None = None
    cohort: CohortStep | None = None
    weight: Percent | None = None
    """Percent of the default entry's traffic served by the candidate."""
    pause: PauseStep | None = None


class Strategy(ApiModel):
    """How the candidate replaces the stable adapter. Without steps it is promoted once Ready."""

    steps: Annotated[list[Step], Field(max_length=64)] | None = None


class AnalysisProvider(ApiModel):
    """Where analysis reads per-adapter metrics."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": PROVIDER_RULES})

    type: Literal["builtin", "prometheus"] = "builtin"
    """`builtin` scrapes the router pods; `prometheus` queries `url`."""
    url: Annotated[str, StringConstraints(pattern=r"^https?://.+", max_length=1024)] | None = None
    """Prometheus base URL (for `prometheus`)."""


class AnalysisSpec(ApiModel):
    """Thresholds the candidate must meet, relative to the stable adapter, at every step."""

    interval: Duration = "1m"
    """How often analysis runs, and the length of its window."""
    min_requests: Annotated[int, Field(ge=0)] = 50
    """Fewer candidate requests than this in a window is inconclusive (the step is extended)."""
    max_inconclusive: Annotated[int, Field(ge=0, le=1000)] = 5
    """Inconclusive windows allowed in one step before the rollout is rolled back."""
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_p95_latency_ratio: Annotated[float, Field(gt=0)] = 1.5
    """Candidate p95 latency over stable p95 latency."""
    max_p99_latency_ratio: Annotated[float, Field(gt=0)] | None = None
    max_ttft_ratio: Annotated[float, Field(gt=0)] | None = None
    """Candidate p95 time to first token over stable's."""
    max_fallback_rate: Annotated[float, Field(ge=0, le=1)] = 0.02
    provider: AnalysisProvider = Field(default_factory=AnalysisProvider)


class CircuitBreakerSpec(ApiModel):
    """Per adapter: stop sending it traffic after repeated failures, probe it again after a cooldown."""

    consecutive_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    max_error_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    """Also open when the error rate over `window` exceeds this."""
    window: Duration = "30s"
    cooldown: Duration = "30s"
    half_open_probes: Annotated[int, Field(ge=1, le=100)] = 3


class FallbackSpec(ApiModel):
    """What the router does when an adapter fails a request."""

    mode: Literal["base", "error"] = "base"
    """`base`: answer with the base model (marked in a response header); `error`: an OpenAI-style error."""
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30
    """Time to the first byte before the adapter is given up on."""
    circuit_breaker: CircuitBreakerSpec = Field(default_factory=CircuitBreakerSpec)


class AdapterRouteSpec(ApiModel):
    """A model name clients send, the adapter(s) behind it, and how changes roll out."""

    model: Annotated[ModelName, StringConstraints(min_length=1)]
    """What clients put in the request's `model` field."""
    base: BaseRoute
    adapter: LabelName | None = None
    """The LoraAdapter for everyone not matched by `tenants`. Unset: the base model answers."""
    tenants: Annotated[list[TenantRule], Field(max_length=256)] | None = None
    strategy: Strategy = Field(default_factory=Strategy)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)


# ---- the effective traffic table (status.traffic; also the router's routes file) ----


class Backend(ApiModel):
    """A share of an entry's traffic. Without `adapter`, the base model answers."""

    adapter: LabelName | None = None
    """The LoraAdapter (absent: the base model)."""
    served_name: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """What the router writes into `model` upstream."""
    weight: Percent


class Mirror(ApiModel):
    """A shadow copy of a share of the entry's requests."""

    adapter: LabelName
    served_name: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    percent: Annotated[int, Field(ge=1, le=100)]


class TrafficEntry(ApiModel):
    """Traffic of some tenants (or, without `tenants`, of everyone else)."""

    tenants: list[TenantId] | None = None
    backends: Annotated[list[Backend], Field(min_length=1)]
    """Weights sum to 100."""
    mirror: Mirror | None = None


class RouteTraffic(ApiModel):
    """Everything the router needs to serve one model name."""

    model: str
    base_url: Annotated[str, StringConstraints(pattern=r"^https?://.+")]
    """Upstream for the base model (the vLLM Service)."""
    base_served_model: str
    entries: Annotated[list[TrafficEntry], Field(min_length=1)]
    endpoints: dict[str, list[str]] | None = None
    """Served name → base URLs of the pods that hold it (absent: any pod behind `baseUrl`)."""
    allowed_tenants: dict[str, list[str]] | None = None
    """Served name → tenants allowed on it (absent: every tenant)."""
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)


class RouteTable(ApiModel):
    """A routes file: `routes: [RouteTraffic, …]`."""

    routes: list[RouteTraffic] = Field(default_factory=list)


# ---- status ----

RoutePhase = Literal["Pending", "Healthy", "Progressing", "Paused", "Degraded", "RolledBack"]


class AdapterFigures(ApiModel):
    """Measured figures of one adapter over an analysis window."""

    adapter: str
    requests: int
    error_rate: float | None = None
    fallback_rate: float | None = None
    p95_latency_seconds: float | None = None
    p99_latency_seconds: float | None = None
    p95_ttft_seconds: float | None = None


class AnalysisResult(ApiModel):
    """The numbers behind the last decision."""

    time: datetime
    step: int
    decision: Literal["Pass", "Fail", "Inconclusive"]
    candidate: AdapterFigures | None = None
    stable: AdapterFigures | None = None
    reasons: list[str] | None = None


class AdapterRouteStatus(ApiModel):
    """What the operator observed and decided."""

    phase: RoutePhase | None = None
    stable_adapter: str | None = None
    """Last fully promoted adapter."""
    canary_adapter: str | None = None
    """Adapter being rolled out, if any."""
    canary_weight: Percent | None = None
    rolled_back_adapter: str | None = None
    """The adapter whose rollout was rolled back (or aborted); it is not retried until the spec changes."""
    current_step: Annotated[int, Field(ge=0)] | None = None
    step_started_at: datetime | None = None
    """When the current step (or its extension after an inconclusive window) began: the analysis window."""
    inconclusive_windows: Annotated[int, Field(ge=0)] | None = None
    """Windows of the current step that had too few requests to decide."""
    traffic: RouteTraffic | None = None
    last_analysis: AnalysisResult | None = None
    message: str | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
