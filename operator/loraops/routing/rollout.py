"""AdapterRoute planner: the rollout state machine and the effective traffic table (pure).

Semantics follow Argo Rollouts, for adapters that share pods: the user declares the desired adapter; the
operator keeps `status.stableAdapter` (the last one fully promoted). When they differ, the strategy's steps
run — mirror, cohort, weight, pause — with analysis at the end of every step and continuously while in it;
success promotes (stable := desired), a breach or an abort sends all traffic back to stable (`RolledBack`,
until the spec names another adapter). A spec change mid-rollout restarts toward the new target from stable.
Whenever an adapter cannot serve (not Ready, another base model, circuit open), its share goes to the base
model, so clients get an answer rather than an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from loraops.api.common import ConditionStatus, parse_duration
from loraops.api.route import (
    AdapterRouteSpec,
    AdapterRouteStatus,
    AnalysisResult,
    Backend,
    Mirror,
    RouteTraffic,
    Step,
    TrafficEntry,
)
from loraops.kube.conditions import Event, set_condition

PROMOTE_ANNOTATION = "loraops.io/promote"
ABORT_ANNOTATION = "loraops.io/abort"


@dataclass(frozen=True)
class AdapterView:
    """A LoraAdapter as the route needs to know it."""

    name: str
    ready: bool
    reason: str = ""
    """Why it is not Ready (empty when Ready)."""
    served_name: str | None = None
    base_model: str | None = None
    tenants: tuple[str, ...] | None = None
    """Tenants it allows (None: every tenant)."""
    endpoints: tuple[str, ...] = ()
    """Base URLs of the pods that hold it."""


@dataclass(frozen=True)
class ObservedRoute:
    adapters: dict[str, AdapterView]
    base_url: str
    analysis: AnalysisResult | None = None
    """The verdict over the current step's window so far (None: no figures)."""
    promote: bool = False
    abort: bool = False
    open_circuits: frozenset[str] = frozenset()
    """Adapters whose circuit breaker the router reports open."""


@dataclass
class RoutePlan:
    status: AdapterRouteStatus
    events: list[Event] = field(default_factory=list)
    consumed_annotations: list[str] = field(default_factory=list)
    """Annotations acted upon; the shell removes them so they act once."""


@dataclass(frozen=True)
class StepTraffic:
    """What step `index` means for traffic: the weights and cohorts set so far, and this step's mirror."""

    weight: int = 0
    cohorts: tuple[str, ...] = ()
    mirror: int = 0


def step_traffic(steps: list[Step], index: int) -> StepTraffic:
    weight, cohorts = 0, list[str]()
    for step in steps[: index + 1]:
        if step.weight is not None:
            weight = step.weight
        if step.cohort is not None:
            cohorts.extend(t for t in step.cohort.tenants if t not in cohorts)
    current = steps[index] if index < len(steps) else None
    mirror = current.mirror.percent if current is not None and current.mirror is not None else 0
    return StepTraffic(weight, tuple(cohorts), mirror)


def usable(spec: AdapterRouteSpec, observed: ObservedRoute, name: str, tenants: tuple[str, ...] = ()) -> str | None:
    """None if `name` can take traffic (for `tenants`), else why not."""
    view = observed.adapters.get(name)
    if view is None:
        return f"LoraAdapter {name} does not exist"
    if not view.ready:
        return f"LoraAdapter {name} is not Ready: {view.reason or 'no reason given'}"
    if view.base_model is not None and view.base_model != spec.base.served_model:
        return f"LoraAdapter {name} is for base model {view.base_model}, the route serves {spec.base.served_model}"
    if name in observed.open_circuits:
        return f"the router's circuit breaker for {name} is open"
    if view.tenants is not None and (denied := [t for t in tenants if t not in view.tenants]):
        return f"LoraAdapter {name} does not allow tenants {', '.join(denied)}"
    return None


def plan_route(
    spec: AdapterRouteSpec,
    current_status: dict[str, object] | None,
    observed: ObservedRoute,
    generation: int | None,
    now: datetime,
) -> RoutePlan:
    status = AdapterRouteStatus.model_validate(current_status or {})
    machine = _Machine(spec, status, observed, now)
    machine.run()
    return machine.finish(generation)


class _Machine:
    def __init__(self, spec: AdapterRouteSpec, status: AdapterRouteStatus, observed: ObservedRoute, now: datetime):
        self.spec, self.observed, self.now = spec, observed, now
        self.previous = status
        self.steps = list(spec.strategy.steps or [])
        self.stable = status.stable_adapter
        self.canary = status.canary_adapter
        self.step = status.current_step
        self.step_started = status.step_started_at
        self.inconclusive = status.inconclusive_windows or 0
        self.rolled_back = status.rolled_back_adapter
        self.last_analysis = observed.analysis or status.last_analysis
        self.phase = "Pending"
        self.message = ""
        self.events: list[Event] = []
        self.consumed: list[str] = []
        self.waiting: str | None = None

    # --- transitions ---
    def run(self) -> None:
        desired = self.spec.adapter
        if self.canary is not None and self.canary != desired:
            self.events.append(Event("Normal", "RolloutRestarted", f"target changed from {self.canary} to {desired}"))
            self._clear_rollout()
        if self.rolled_back is not None and self.rolled_back != desired:
            self.rolled_back = None
        if self.observed.abort:
            self.consumed.append(ABORT_ANNOTATION)
            if self.canary is None and desired not in (None, self.stable, self.rolled_back) and self.stable is not None:
                self.canary = desired  # an abort before the first step still stops this target
            if self.canary is not None:
                self._roll_back("Aborted", f"rollout of {self.canary} aborted by annotation {ABORT_ANNOTATION}")
                return

        if desired is None:
            self.stable = None
            self.phase, self.message = "Healthy", "no adapter: the base model answers"
        elif self.stable is None:
            self._first_promotion(desired)
        elif desired == self.stable:
            self.phase, self.message = "Healthy", f"{desired} serves all traffic"
        elif self.rolled_back == desired:
            self.phase = "RolledBack"
            self.message = (
                f"the rollout of {desired} was rolled back; traffic is on {self.stable} until the spec changes"
            )
        else:
            self._roll_out(desired)
        if self.observed.promote and PROMOTE_ANNOTATION not in self.consumed:
            self.consumed.append(PROMOTE_ANNOTATION)  # nothing to promote: not kept for a later pause

    def _first_promotion(self, desired: str) -> None:
        problem = usable(self.spec, self.observed, desired)
        if problem:
            self.phase, self.message, self.waiting = "Pending", f"waiting: {problem}", problem
            return
        self.stable = desired
        self.phase, self.message = "Healthy", f"{desired} promoted (first adapter of the route)"
        self.events.append(Event("Normal", "Promoted", self.message))

    def _roll_out(self, desired: str) -> None:
        cohort_tenants = step_traffic(self.steps, len(self.steps)).cohorts if self.steps else ()
        problem = usable(self.spec, self.observed, desired, cohort_tenants)
        if self.canary is None:
            if problem:
                self.phase = "Progressing"
                self.message, self.waiting = f"waiting to roll out {desired}: {problem}", problem
                return
            self.canary, self.step, self.step_started, self.inconclusive = desired, 0, self.now, 0
            self.events.append(Event("Normal", "RolloutStarted", f"rolling out {desired} over {len(self.steps)} steps"))
            if self.steps:  # the first step gets its time; without steps there is nothing to wait for
                self._describe_phase()
                return
        elif problem:
            self._roll_back("CandidateNotReady", problem)
            return
        self._advance()

    def _advance(self) -> None:
        assert self.canary is not None and self.step is not None and self.step_started is not None
        analysis = self.observed.analysis
        if analysis is not None and analysis.decision == "Fail":
            reasons = "; ".join(analysis.reasons or [])
            self._roll_back("AnalysisFailed", f"step {self.step + 1}: {reasons}")
            return
        if self.step >= len(self.steps):
            self._promote()
            return
        step = self.steps[self.step]
        elapsed = (self.now - self.step_started).total_seconds()
        interval = parse_duration(self.spec.analysis.interval)
        done = False
        if step.pause is not None:
            if step.pause.duration is not None:
                done = elapsed >= parse_duration(step.pause.duration)
            elif self.observed.promote:
                self.consumed.append(PROMOTE_ANNOTATION)
                done = True
        elif elapsed >= interval:
            if analysis is not None and analysis.decision == "Pass":
                done = True
            else:
                self.inconclusive += 1
                if self.inconclusive > self.spec.analysis.max_inconclusive:
                    self._roll_back(
                        "InconclusiveAnalysis", f"step {self.step + 1}: {self.inconclusive} windows too few requests"
                    )
                    return
                self.step_started = self.now
                self.events.append(
                    Event("Normal", "StepExtended", f"step {self.step + 1}: too few requests, window extended")
                )
        if done:
            self.step += 1
            self.step_started, self.inconclusive = self.now, 0
            if self.step >= len(self.steps):
                self._promote()
                return
            self.events.append(
                Event(
                    "Normal",
                    "StepAdvanced",
                    f"step {self.step + 1} of {len(self.steps)}: {_describe(self.steps[self.step])}",
                )
            )
        self._describe_phase()

    def _describe_phase(self) -> None:
        assert self.step is not None
        current = self.steps[self.step]
        if current.pause is not None and current.pause.duration is None:
            self.phase = "Paused"
            self.message = f"paused at step {self.step + 1}: annotate {PROMOTE_ANNOTATION}=true to continue"
        else:
            self.phase = "Progressing"
            self.message = (
                f"rolling out {self.canary}: step {self.step + 1} of {len(self.steps)} ({_describe(current)})"
            )

    def _promote(self) -> None:
        promoted = self.canary
        self.stable = promoted
        self._clear_rollout()
        self.phase, self.message = "Healthy", f"{promoted} promoted: it serves all traffic"
        self.events.append(Event("Normal", "Promoted", self.message))

    def _roll_back(self, reason: str, detail: str) -> None:
        failed = self.canary
        self.rolled_back = failed
        self._clear_rollout()
        self.phase = "RolledBack"
        self.message = f"rolled back {failed} ({reason}): {detail}; traffic is on {self.stable or 'the base model'}"
        self.events.append(Event("Warning", "RolledBack", self.message))

    def _clear_rollout(self) -> None:
        self.canary = self.step = self.step_started = None
        self.inconclusive = 0

    # --- results ---
    def finish(self, generation: int | None) -> RoutePlan:
        in_rollout = self.canary is not None and self.step is not None
        traffic_step = step_traffic(self.steps, self.step) if in_rollout and self.step is not None else StepTraffic()
        traffic, degraded = build_traffic(self.spec, self.observed, self.stable, self.canary, traffic_step)
        if degraded and self.phase == "Healthy":
            self.phase = "Degraded"
            self.message = f"base model answers: {degraded}"
        if degraded and self.previous.phase != "Degraded" and self.phase == "Degraded":
            self.events.append(Event("Warning", "Degraded", self.message))
        if self.previous.phase == "Degraded" and self.phase == "Healthy":
            self.events.append(Event("Normal", "Recovered", self.message))

        conditions = self.previous.conditions

        def cond(type_: str, value: ConditionStatus, reason: str, message: str) -> None:
            nonlocal conditions
            conditions = set_condition(conditions, type_, value, reason, message, generation, self.now)

        cond("Accepted", "True", "SpecValid", "the spec is valid")
        serving_adapter = (self.stable is not None and not degraded) or self.spec.adapter is None
        if serving_adapter:
            cond("Ready", "True", "Serving", self.message)
        else:
            cond("Ready", "False", "PreconditionsNotMet" if self.waiting else "StableNotReady", self.message)
        cond("Progressing", "True" if in_rollout else "False", self.phase, self.message)
        cond(
            "Degraded",
            "True" if degraded else "False",
            "AdapterUnavailable" if degraded else "AllAdaptersServing",
            degraded or "",
        )
        status = AdapterRouteStatus(
            phase=self.phase,
            stable_adapter=self.stable,
            canary_adapter=self.canary,
            canary_weight=_canary_weight(traffic, self.canary) if in_rollout else None,
            rolled_back_adapter=self.rolled_back,
            current_step=self.step,
            step_started_at=self.step_started,
            inconclusive_windows=self.inconclusive or None,
            traffic=traffic,
            last_analysis=self.last_analysis,
            message=self.message,
            observed_generation=generation,
            conditions=conditions,
        )
        return RoutePlan(status, self.events, self.consumed)


def _describe(step: Step) -> str:
    if step.pause is not None:
        return f"pause {step.pause.duration}" if step.pause.duration else "pause until promoted"
    if step.cohort is not None:
        return f"cohort {', '.join(step.cohort.tenants)}"
    parts = [f"weight {step.weight}%"] if step.weight is not None else []
    if step.mirror is not None:
        parts.append(f"mirror {step.mirror.percent}%")
    return " + ".join(parts)


def _canary_weight(traffic: RouteTraffic, canary: str | None) -> int:
    default = traffic.entries[-1]
    return sum(b.weight for b in default.backends if b.adapter is not None and b.adapter == canary)


def build_traffic(
    spec: AdapterRouteSpec,
    observed: ObservedRoute,
    stable: str | None,
    canary: str | None,
    step: StepTraffic,
) -> tuple[RouteTraffic, str]:
    """The effective traffic table, and why (if at all) some traffic meant for an adapter goes to base."""
    base = spec.base.served_model
    problems: list[str] = []

    def backend(name: str | None, weight: int, tenants: tuple[str, ...] = ()) -> Backend:
        if name is None:
            return Backend(served_name=base, weight=weight)
        problem = usable(spec, observed, name, tenants)
        view = observed.adapters.get(name)
        if problem or view is None or not view.served_name:
            problems.append(problem or f"LoraAdapter {name} has no served name yet")
            return Backend(served_name=base, weight=weight)
        return Backend(adapter=name, served_name=view.served_name, weight=weight)

    entries: list[TrafficEntry] = []
    pinned: set[str] = set()
    for rule in spec.tenants or []:
        entries.append(
            TrafficEntry(tenants=list(rule.tenants), backends=[backend(rule.adapter, 100, tuple(rule.tenants))])
        )
        pinned.update(rule.tenants)
    if canary is not None and (cohort := tuple(t for t in step.cohorts if t not in pinned)):
        entries.append(TrafficEntry(tenants=list(cohort), backends=[backend(canary, 100, cohort)]))
    shares = [backend(stable, 100 - step.weight)]
    if canary is not None and step.weight > 0:
        shares.append(backend(canary, step.weight))
    default = TrafficEntry(backends=_merge(shares))
    if canary is not None and step.mirror:
        view = observed.adapters.get(canary)
        if view is not None and view.served_name and not usable(spec, observed, canary):
            default.mirror = Mirror(adapter=canary, served_name=view.served_name, percent=step.mirror)
    entries.append(default)

    used = {b.adapter for e in entries for b in e.backends if b.adapter} | (
        {default.mirror.adapter} if default.mirror else set()
    )
    views = [observed.adapters[name] for name in sorted(used)]
    traffic = RouteTraffic(
        model=spec.model,
        base_url=observed.base_url,
        base_served_model=base,
        entries=entries,
        endpoints={v.served_name: list(v.endpoints) for v in views if v.served_name and v.endpoints} or None,
        allowed_tenants={v.served_name: list(v.tenants) for v in views if v.served_name and v.tenants is not None}
        or None,
        fallback=spec.fallback,
    )
    return traffic, "; ".join(dict.fromkeys(problems))


def _merge(backends: list[Backend]) -> list[Backend]:
    """One backend per served name, zero weights dropped (but never an empty entry)."""
    merged: dict[str, Backend] = {}
    for item in backends:
        if item.served_name in merged:
            merged[item.served_name].weight += item.weight
        else:
            merged[item.served_name] = item.model_copy()
    kept = [b for b in merged.values() if b.weight > 0]
    return kept or list(merged.values())[:1]
