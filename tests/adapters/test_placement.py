"""Placement: every ready replica by default, N least-loaded ones on request, capacity respected, no churn."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraops.adapters.placement import (
    AdapterWant,
    Assignment,
    Outcome,
    PodView,
    placements,
    plan_actions,
    plan_placement,
    served_name,
)
from loraops.agent.models import NAME_PATTERN, AdapterRecord

pytestmark = pytest.mark.adapters

DIGEST = "ab" * 32
OTHER = "cd" * 32


def record(name: str, state: str = "Loaded", digest: str = DIGEST, **extra: object) -> AdapterRecord:
    return AdapterRecord(name=name, served_name=name, digest=digest, uri="s3://b/x", state=state, **extra)  # type: ignore[arg-type]


def pod(name: str, *held: AdapterRecord, ready: bool = True, answered: bool = True) -> PodView:
    records = {r.name: r for r in held} if answered else None
    return PodView(name, ready, f"http://{name}:8090", records, None if answered else "AgentUnavailable: refused")


def want(name: str, created: str = "2026-01-01T00:00:00Z", replicas: int | None = None) -> AdapterWant:
    return AdapterWant(name, created, replicas)


def test_default_is_every_ready_pod_with_an_agent() -> None:
    pods = [pod("p0"), pod("p1"), pod("p2"), pod("p3", ready=False), PodView("p4", True, None)]
    plan = plan_placement([want("a")], pods, capacity=8)
    assert plan["a"] == Assignment(("p0", "p1", "p2"), 3)


def test_replicas_spread_over_the_least_loaded_pods() -> None:
    pods = [pod("p0"), pod("p1"), pod("p2")]
    adapters = [want(f"a{i}", f"2026-01-01T00:00:0{i}Z", replicas=1) for i in range(6)]
    plan = plan_placement(adapters, pods, capacity=8)
    load = Counter(p for a in plan.values() for p in a.pods)
    assert load == {"p0": 2, "p1": 2, "p2": 2}


def test_a_pod_already_holding_the_adapter_keeps_it() -> None:
    pods = [pod("p0"), pod("p1"), pod("p2", record("a"))]
    assert plan_placement([want("a", replicas=1)], pods, capacity=8)["a"].pods == ("p2",)


def test_capacity_leaves_the_newest_adapters_short_never_the_older_ones() -> None:
    pods = [pod("p0"), pod("p1")]
    adapters = [want(f"a{i:02d}", f"2026-01-01T00:00:{i:02d}Z") for i in range(5)]
    plan = plan_placement(list(reversed(adapters)), pods, capacity=3)
    assert [plan[f"a{i:02d}"].pods for i in range(3)] == [("p0", "p1")] * 3
    assert plan["a03"] == Assignment((), 2, short_by_capacity=2)
    assert plan["a04"].short_by_capacity == 2


def test_fifty_adapters_on_three_replicas_fit_when_capacity_allows() -> None:
    pods = [pod(f"p{i}") for i in range(3)]
    plan = plan_placement([want(f"a{i:02d}") for i in range(50)], pods, capacity=64)
    assert all(a.pods == ("p0", "p1", "p2") and not a.short_by_capacity for a in plan.values())


def test_unplaceable_adapters_take_no_capacity() -> None:
    pods = [pod("p0")]
    blocked = AdapterWant("old", "2025-01-01T00:00:00Z", placeable=False)
    plan = plan_placement([blocked, want("new")], pods, capacity=1)
    assert plan["old"].pods == () and plan["new"].pods == ("p0",)


def test_more_replicas_than_ready_pods_is_reported_as_wanted() -> None:
    plan = plan_placement([want("a", replicas=5)], [pod("p0"), pod("p1")], capacity=8)
    assert plan["a"] == Assignment(("p0", "p1"), 5)


@settings(max_examples=80, deadline=None)
@given(
    n_pods=st.integers(0, 6),
    replicas=st.lists(st.one_of(st.none(), st.integers(1, 8)), min_size=0, max_size=30),
    capacity=st.integers(0, 10),
)
def test_capacity_is_never_exceeded_and_plans_are_deterministic(
    n_pods: int, replicas: list[int | None], capacity: int
) -> None:
    pods = [pod(f"p{i}") for i in range(n_pods)]
    adapters = [want(f"a{i:02d}", f"2026-01-01T00:{i:02d}:00Z", r) for i, r in enumerate(replicas)]
    plan = plan_placement(adapters, pods, capacity)
    load = Counter(p for a in plan.values() for p in a.pods)
    assert all(count <= capacity for count in load.values())
    for adapter in adapters:
        assignment = plan[adapter.name]
        assert len(set(assignment.pods)) == len(assignment.pods) <= min(assignment.wanted, n_pods)
        assert len(assignment.pods) + assignment.short_by_capacity == min(assignment.wanted, n_pods)
    assert plan_placement(list(reversed(adapters)), list(reversed(pods)), capacity) == plan


def test_actions_tell_only_what_is_missing() -> None:
    pods = [
        pod("loaded", record("a")),
        pod("empty"),
        pod("old-digest", record("a", digest=OTHER)),
        pod("failed", record("a", state="Failed")),
        pod("loading", record("a", state="Loading")),
        pod("unreachable", answered=False),
        pod("not-chosen", record("a")),
    ]
    chosen = Assignment(("loaded", "empty", "old-digest", "failed", "loading", "unreachable"), 6)
    actions = plan_actions("a", DIGEST, chosen, pods)
    assert sorted(actions.put) == ["empty", "failed", "old-digest"]
    assert actions.delete == ["not-chosen"]


def test_no_put_before_the_digest_is_known() -> None:
    actions = plan_actions("a", None, Assignment(("p0",), 1), [pod("p0")])
    assert actions.put == [] and actions.delete == []


def test_placements_show_the_latest_word_of_each_agent() -> None:
    pods = [pod("p0", record("a")), pod("p1"), pod("p2"), pod("p3", answered=False), pod("gone", record("a"))]
    assignment = Assignment(("p0", "p1", "p2", "p3"), 4)
    outcomes = {
        "p1": Outcome(record("a", size=10, files=2)),
        "p2": Outcome(None, "DigestMismatch", "adapter_model.safetensors: sha256 differs"),
        "gone": Outcome(),
    }
    views = {v.pod: v for v in placements("a", DIGEST, assignment, pods, outcomes)}
    assert views["p0"].state == "Loaded" and views["p1"].state == "Loaded" and views["p1"].size == 10
    assert views["p2"].state == "Failed" and views["p2"].reason == "DigestMismatch"
    assert views["p3"].state == "Loading" and "agent unavailable" in (views["p3"].message or "")
    assert "gone" not in views, "unloaded during this reconcile"


def test_a_vllm_outage_is_loading_not_failed() -> None:
    outcomes = {"p0": Outcome(None, "VllmUnavailable", "vLLM did not answer")}
    (view,) = placements("a", DIGEST, Assignment(("p0",), 1), [pod("p0")], outcomes)
    assert view.state == "Loading" and view.reason == "VllmUnavailable"


# ---- issue 10: one served name per release; a slot is free only once the agent dropped the adapter ----


def test_each_release_has_its_own_served_name_carrying_its_digest() -> None:
    assert served_name("support", DIGEST) == f"support-{DIGEST[:12]}"
    assert served_name("support", f"sha256:{DIGEST}") == served_name("support", DIGEST)
    assert served_name("support", DIGEST) != served_name("support", OTHER), "two releases never share a name"
    long = served_name("a" * 253, DIGEST)
    assert len(long) == 253 and long.endswith(f"-{DIGEST[:12]}") and re.fullmatch(NAME_PATTERN, long)


def test_an_adapter_the_agent_still_holds_keeps_its_slot() -> None:
    # "a" went from 2 replicas to 1: p1 still holds it until its DELETE is done, so "b" must not be PUT there
    # in the same reconcile (vLLM would hold 2 adapters with room for 1).
    pods = [pod("p0", record("a")), pod("p1", record("a"))]
    plan = plan_placement([want("a", replicas=1), want("b", "2026-01-02T00:00:00Z", replicas=1)], pods, capacity=1)
    assert plan["a"].pods == ("p0",) and plan["b"] == Assignment((), 1, short_by_capacity=1)
    # once the agent no longer lists it, the slot is free
    after = plan_placement(
        [want("a", replicas=1), want("b", "2026-01-02T00:00:00Z", replicas=1)], [pods[0], pod("p1")], 1
    )
    assert after["b"].pods == ("p1",)


def test_orphans_and_unloading_adapters_take_slots_failed_records_do_not() -> None:
    pods = [pod("p0", record("orphan", "Unloading")), pod("p1", record("broken", "Failed"))]
    plan = plan_placement([want("a", replicas=1)], pods, capacity=1)
    assert plan["a"].pods == ("p1",)
    full = plan_placement([want("a")], [pod("p0", record("orphan")), pod("p1", record("other"))], capacity=1)
    assert full["a"] == Assignment((), 2, short_by_capacity=2)


def test_a_held_adapter_keeps_its_place_even_on_a_full_pod() -> None:
    pods = [pod("p0", record("a"), record("orphan"))]
    assert plan_placement([want("a")], pods, capacity=2)["a"].pods == ("p0",)
    assert plan_placement([want("a")], pods, capacity=1)["a"].pods == ("p0",), "already loaded: no churn"
