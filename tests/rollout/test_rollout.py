"""The AdapterRoute state machine and traffic table (pure): walkthroughs and property tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraops.api.route import AdapterFigures, AdapterRouteSpec, AdapterRouteStatus, AnalysisResult, RouteTraffic
from loraops.routing.rollout import ABORT_ANNOTATION, PROMOTE_ANNOTATION, AdapterView, ObservedRoute, plan_route

pytestmark = pytest.mark.rollout

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
BASE = "meta-llama/Llama-3.1-8B-Instruct"


def spec(adapter: str | None = "v1", steps: list[dict[str, Any]] | None = None, **extra: Any) -> AdapterRouteSpec:
    raw: dict[str, Any] = {
        "model": "support-bot",
        "base": {"deployment": "llama", "service": "llama", "servedModel": BASE},
        "strategy": {"steps": steps if steps is not None else []},
        "analysis": {"interval": "1m", "minRequests": 10, "maxInconclusive": 2},
        **extra,
    }
    if adapter:
        raw["adapter"] = adapter
    return AdapterRouteSpec.model_validate(raw)


def view(name: str, ready: bool = True, **kw: Any) -> AdapterView:
    return AdapterView(
        name=name, ready=ready, reason="" if ready else "Loading", served_name=f"{name}-srv", base_model=BASE, **kw
    )


def observed(*views: AdapterView, analysis: str | None = None, **kw: Any) -> ObservedRoute:
    result = None
    if analysis:
        figures = AdapterFigures(adapter="x", requests=100, error_rate=0.5 if analysis == "Fail" else 0.0)
        result = AnalysisResult(time=T0, step=0, decision=analysis, candidate=figures, reasons=[analysis])  # type: ignore[arg-type]
    return ObservedRoute(adapters={v.name: v for v in views}, base_url="http://llama:8000", analysis=result, **kw)


class Route:
    """Drive the planner through time like the controller does."""

    def __init__(self, route_spec: AdapterRouteSpec, status: dict[str, Any] | None = None) -> None:
        self.spec = route_spec
        self.status: dict[str, Any] | None = status
        self.now = T0
        self.events: list[str] = []

    def tick(self, obs: ObservedRoute, advance: timedelta = timedelta(seconds=0)) -> AdapterRouteStatus:
        self.now += advance
        plan = plan_route(self.spec, self.status, obs, 1, self.now)
        self.status = plan.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        self.events += [e.reason for e in plan.events]
        check_invariants(plan.status.traffic, obs)
        return plan.status


def weights(traffic: RouteTraffic | None, tenants: list[str] | None = None) -> dict[str, int]:
    assert traffic is not None
    entry = next(e for e in traffic.entries if e.tenants == tenants)
    return {b.adapter or "base": b.weight for b in entry.backends}


def check_invariants(traffic: RouteTraffic | None, obs: ObservedRoute) -> None:
    assert traffic is not None
    for entry in traffic.entries:
        assert sum(b.weight for b in entry.backends) == 100, entry
        for backend in entry.backends:
            if backend.adapter is not None:
                v = obs.adapters[backend.adapter]
                assert v.ready and backend.adapter not in obs.open_circuits, f"{backend.adapter} got weight"
    assert traffic.entries[-1].tenants is None, "the default entry comes last"


STEPS = [
    {"mirror": {"percent": 20}},
    {"cohort": {"tenants": ["acme"]}},
    {"weight": 10},
    {"pause": {"duration": "10m"}},
    {"weight": 50},
]
MINUTE = timedelta(minutes=1)


def promoted(name: str, steps: list[dict[str, Any]] | None = None) -> Route:
    route = Route(spec(name, steps if steps is not None else STEPS))
    route.tick(observed(view(name)))
    return route


def test_first_adapter_waits_for_ready_then_is_promoted() -> None:
    route = Route(spec("v1", STEPS))
    status = route.tick(observed(view("v1", ready=False)))
    assert status.phase == "Pending" and status.stable_adapter is None
    assert "not Ready" in (status.message or "") and weights(status.traffic) == {"base": 100}
    status = route.tick(observed(view("v1")))
    assert status.phase == "Healthy" and status.stable_adapter == "v1" and weights(status.traffic) == {"v1": 100}
    assert route.events == ["Promoted"]


def test_healthy_candidate_walks_every_step_to_promotion() -> None:
    route = promoted("v1")
    route.spec = spec("v2", STEPS)
    both = (view("v1"), view("v2"))
    status = route.tick(observed(*both))
    assert status.phase == "Progressing" and status.current_step == 0 and status.canary_adapter == "v2"
    assert weights(status.traffic) == {"v1": 100}
    assert status.traffic is not None and status.traffic.entries[-1].mirror is not None
    assert status.traffic.entries[-1].mirror.percent == 20, "step 1 mirrors 20% to the candidate"
    status = route.tick(observed(*both, analysis="Pass"), MINUTE)
    assert status.current_step == 1 and weights(status.traffic, ["acme"]) == {"v2": 100}
    assert weights(status.traffic) == {"v1": 100} and status.traffic.entries[-1].mirror is None
    status = route.tick(observed(*both, analysis="Pass"), MINUTE)
    assert status.current_step == 2 and weights(status.traffic) == {"v1": 90, "v2": 10} and status.canary_weight == 10
    assert weights(status.traffic, ["acme"]) == {"v2": 100}, "cohorts stay on the candidate in later steps"
    status = route.tick(observed(*both, analysis="Pass"), MINUTE)
    assert status.current_step == 3 and status.phase == "Progressing"  # timed pause
    status = route.tick(observed(*both, analysis="Pass"), 5 * MINUTE)
    assert status.current_step == 3, "a 10m pause is not over after 5m"
    status = route.tick(observed(*both, analysis="Pass"), 5 * MINUTE)
    assert status.current_step == 4 and weights(status.traffic) == {"v1": 50, "v2": 50}
    status = route.tick(observed(*both, analysis="Pass"), MINUTE)
    assert status.phase == "Healthy" and status.stable_adapter == "v2" and status.canary_adapter is None
    assert weights(status.traffic) == {"v2": 100}
    assert route.events[-1] == "Promoted" and "RolloutStarted" in route.events


def test_a_step_is_not_passed_before_its_window_ends() -> None:
    route = promoted("v1")
    route.spec = spec("v2", STEPS)
    route.tick(observed(view("v1"), view("v2")))
    status = route.tick(observed(view("v1"), view("v2"), analysis="Pass"), timedelta(seconds=30))
    assert status.current_step == 0


def test_breach_rolls_back_at_once_and_stays_rolled_back_until_the_spec_changes() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"weight": 10}, {"weight": 50}])
    route.tick(observed(view("v1"), view("v2")))
    status = route.tick(observed(view("v1"), view("v2"), analysis="Fail"), timedelta(seconds=5))
    assert status.phase == "RolledBack" and weights(status.traffic) == {"v1": 100}
    assert status.rolled_back_adapter == "v2" and status.canary_adapter is None and status.stable_adapter == "v1"
    assert route.events[-1] == "RolledBack" and "Fail" in (status.message or "")
    status = route.tick(observed(view("v1"), view("v2"), analysis="Pass"), MINUTE)
    assert status.phase == "RolledBack", "the same target is not retried by itself"
    route.spec = spec("v3", [{"weight": 10}])
    status = route.tick(observed(view("v1"), view("v2"), view("v3")))
    assert status.phase == "Progressing" and status.canary_adapter == "v3" and status.rolled_back_adapter is None


def test_abort_annotation_rolls_back() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"weight": 30}])
    route.tick(observed(view("v1"), view("v2")))
    plan = plan_route(route.spec, route.status, observed(view("v1"), view("v2"), abort=True), 1, T0)
    assert plan.status.phase == "RolledBack" and ABORT_ANNOTATION in plan.consumed_annotations
    assert weights(plan.status.traffic) == {"v1": 100}


def test_indefinite_pause_waits_for_the_promote_annotation() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"weight": 20}, {"pause": {}}, {"weight": 60}])
    route.tick(observed(view("v1"), view("v2")))
    status = route.tick(observed(view("v1"), view("v2"), analysis="Pass"), MINUTE)
    assert status.phase == "Paused" and status.current_step == 1 and weights(status.traffic) == {"v1": 80, "v2": 20}
    status = route.tick(observed(view("v1"), view("v2"), analysis="Pass"), 60 * MINUTE)
    assert status.phase == "Paused", "an indefinite pause does not time out"
    plan = plan_route(route.spec, route.status, observed(view("v1"), view("v2"), promote=True), 1, route.now)
    assert plan.status.current_step == 2 and PROMOTE_ANNOTATION in plan.consumed_annotations
    assert weights(plan.status.traffic) == {"v1": 40, "v2": 60}


def test_spec_change_mid_rollout_restarts_from_stable() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"weight": 10}, {"weight": 50}])
    route.tick(observed(view("v1"), view("v2")))
    route.tick(observed(view("v1"), view("v2"), analysis="Pass"), MINUTE)
    route.spec = spec("v3", [{"weight": 10}, {"weight": 50}])
    status = route.tick(observed(view("v1"), view("v2"), view("v3")))
    assert status.canary_adapter == "v3" and status.current_step == 0 and status.stable_adapter == "v1"
    assert weights(status.traffic) == {"v1": 90, "v3": 10}
    assert "RolloutRestarted" in route.events


def test_stable_not_ready_degrades_to_base_and_recovers() -> None:
    route = promoted("v1")
    status = route.tick(observed())  # deleted
    assert status.phase == "Degraded" and weights(status.traffic) == {"base": 100}
    assert "does not exist" in (status.message or "") and route.events[-1] == "Degraded"
    status = route.tick(observed(view("v1"), open_circuits=frozenset({"v1"})))
    assert status.phase == "Degraded" and "circuit breaker" in (status.message or "")
    status = route.tick(observed(view("v1")))
    assert status.phase == "Healthy" and weights(status.traffic) == {"v1": 100} and route.events[-1] == "Recovered"


def test_inconclusive_windows_extend_the_step_then_roll_back() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"weight": 10}])
    route.tick(observed(view("v1"), view("v2")))
    for expected in (1, 2):
        status = route.tick(observed(view("v1"), view("v2"), analysis="Inconclusive"), MINUTE)
        assert status.phase == "Progressing" and status.inconclusive_windows == expected
    status = route.tick(observed(view("v1"), view("v2"), analysis="Inconclusive"), MINUTE)
    assert status.phase == "RolledBack" and "InconclusiveAnalysis" in (status.message or "")


def test_candidate_that_stops_being_ready_is_rolled_back() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"weight": 50}])
    route.tick(observed(view("v1"), view("v2")))
    status = route.tick(observed(view("v1"), view("v2", ready=False)))
    assert status.phase == "RolledBack" and weights(status.traffic) == {"v1": 100}


def test_candidate_not_ready_waits_before_any_traffic() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"weight": 50}])
    status = route.tick(observed(view("v1"), view("v2", ready=False)))
    assert status.phase == "Progressing" and status.canary_adapter is None and weights(status.traffic) == {"v1": 100}
    ready = {c.type: c for c in status.conditions or []}["Ready"]
    assert ready.status == "True"


def test_cohort_needs_an_adapter_that_allows_those_tenants() -> None:
    route = promoted("v1")
    route.spec = spec("v2", [{"cohort": {"tenants": ["acme"]}}])
    status = route.tick(observed(view("v1"), view("v2", tenants=("globex",))))
    assert status.canary_adapter is None and "does not allow tenants acme" in (status.message or "")


def test_tenant_rules_pin_tenants_and_publish_endpoints_and_allowed_tenants() -> None:
    route = Route(spec("v1", [], tenants=[{"tenants": ["globex"], "adapter": "globex-v1"}]))
    obs = observed(view("v1", endpoints=("http://10.0.0.1:8000",)), view("globex-v1", tenants=("globex",)))
    status = route.tick(obs)
    assert weights(status.traffic, ["globex"]) == {"globex-v1": 100} and weights(status.traffic) == {"v1": 100}
    assert status.traffic is not None
    assert status.traffic.endpoints == {"v1-srv": ["http://10.0.0.1:8000"]}
    assert status.traffic.allowed_tenants == {"globex-v1-srv": ["globex"]}
    status = route.tick(observed(view("v1"), view("globex-v1", ready=False, tenants=("globex",))))
    assert weights(status.traffic, ["globex"]) == {"base": 100} and status.phase == "Degraded"


def test_no_steps_promotes_once_ready() -> None:
    route = promoted("v1", steps=[])
    route.spec = spec("v2", [])
    status = route.tick(observed(view("v1"), view("v2")))
    assert status.phase == "Healthy" and status.stable_adapter == "v2"


def test_status_written_is_valid_for_the_schema() -> None:
    from loraops.api.validation import validate

    route = promoted("v1")
    route.spec = spec("v2", STEPS)
    route.tick(observed(view("v1"), view("v2")))
    manifest = {
        "apiVersion": "loraops.io/v1alpha1",
        "kind": "AdapterRoute",
        "metadata": {"name": "r"},
        "spec": route.spec.wire(),
        "status": route.status,
    }
    validate(manifest)


# ---- property test: invariants under random step lists, readiness and analysis streams ----

TENANTS = ["acme", "globex", "initech"]
step_st = st.one_of(
    st.builds(lambda p: {"mirror": {"percent": p}}, st.integers(1, 100)),
    st.builds(lambda t: {"cohort": {"tenants": t}}, st.lists(st.sampled_from(TENANTS), min_size=1, unique=True)),
    st.builds(lambda w: {"weight": w}, st.integers(0, 100)),
    st.just({"pause": {"duration": "2m"}}),
    st.just({"pause": {}}),
)  # fmt: skip
tick_st = st.fixed_dictionaries(
    {
        "analysis": st.sampled_from([None, "Pass", "Pass", "Pass", "Fail", "Inconclusive"]),
        "stable_ready": st.booleans() | st.just(True),
        "canary_ready": st.booleans() | st.just(True),
        "minutes": st.integers(0, 3),
        "promote": st.booleans(),
        "abort": st.sampled_from([False] * 9 + [True]),
    }
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step_st, max_size=6), ticks=st.lists(tick_st, min_size=1, max_size=25))
def test_invariants_hold_for_any_steps_and_metric_stream(
    steps: list[dict[str, Any]], ticks: list[dict[str, Any]]
) -> None:
    route = promoted("v1", steps=steps)
    route.spec = spec("v2", steps)
    passed_last_step = False
    for tick in ticks:
        before = AdapterRouteStatus.model_validate(route.status or {})
        obs = observed(view("v1", ready=tick["stable_ready"]), view("v2", ready=tick["canary_ready"]),
                       analysis=tick["analysis"], promote=tick["promote"], abort=tick["abort"])  # fmt: skip
        status = route.tick(obs, timedelta(minutes=tick["minutes"]))
        if before.canary_adapter and (tick["analysis"] == "Fail" or tick["abort"] or not tick["canary_ready"]):
            assert status.phase == "RolledBack", "a breach, an abort or a candidate gone not Ready ends in stable"
            assert all(b.adapter in ("v1", None) for e in status.traffic.entries for b in e.backends)  # type: ignore[union-attr]
            assert status.traffic.entries[-1].mirror is None  # type: ignore[union-attr]
        if status.stable_adapter == "v2" and before.stable_adapter == "v1":
            passed_last_step = True
            assert tick["analysis"] != "Fail" and not tick["abort"]
            if steps:  # without steps a Ready candidate is promoted at once
                assert before.canary_adapter == "v2" and before.current_step is not None
                assert before.current_step >= len(steps) - 1, "promotion only after the last step"
    if route.status and route.status.get("stableAdapter") == "v2":
        assert passed_last_step
