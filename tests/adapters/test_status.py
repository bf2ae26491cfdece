"""Adapter status: Ready = Verified ∧ Compatible ∧ Loaded (∧ Evaluated), phases, reasons, Events on change."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from loraops.adapters.placement import Assignment, PlacementView
from loraops.adapters.preflight import Source, Verdict
from loraops.adapters.routes import routes_sending_to
from loraops.adapters.status import Observation, plan_deletion_status, plan_status
from loraops.api.adapter import LoraAdapterSpec

pytestmark = pytest.mark.adapters

DIGEST = "9f" * 32
NOW = datetime(2026, 11, 1, tzinfo=UTC)
LATER = datetime(2026, 11, 1, 0, 5, tzinfo=UTC)
COMPATIBLE = Verdict("True", "Compatible", "fits")
SOURCE = Source("s3://adapters/support/support-v1/", DIGEST, "s3-reader")
ALL3 = Assignment(("p0", "p1", "p2"), 3)


@pytest.fixture
def spec(examples: dict[str, Any]) -> LoraAdapterSpec:
    raw = copy.deepcopy(examples["LoraAdapter"]["spec"])
    raw.pop("evaluation")
    return LoraAdapterSpec.model_validate(raw)


def loaded(pod: str, state: str = "Loaded", **extra: Any) -> PlacementView:
    return PlacementView(pod, state, DIGEST, "support-v1", NOW if state == "Loaded" else None, **extra)


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_ready_on_every_replica(spec: LoraAdapterSpec) -> None:
    obs = Observation(spec, SOURCE, COMPATIBLE, ALL3, [loaded("p0", size=9, files=3), loaded("p1"), loaded("p2")])
    status, events = plan_status(None, 2, "support-v1", obs, NOW)
    assert status["phase"] == "Ready" and status["readyReplicas"] == "3/3" and status["servedName"] == "support-v1"
    assert cond(status, "Ready")["status"] == "True" and cond(status, "Verified")["reason"] == "DigestVerified"
    assert status["artifact"] == {"uri": SOURCE.uri, "digest": DIGEST, "sizeBytes": 9, "files": 3}
    assert [p["pod"] for p in status["placements"]] == ["p0", "p1", "p2"]
    assert status["release"]["version"] == "1.0.0" and status["release"]["owner"] == "support-ml"
    assert status["release"]["digest"] == DIGEST and status["observedGeneration"] == 2
    assert [(e.type, e.reason) for e in events] == [("Normal", "Ready")]
    again, repeated = plan_status(status, 2, "support-v1", obs, LATER)
    assert again == status and repeated == [], "a resync changes nothing and says nothing"


def test_partial_load_is_not_ready_and_says_how_far(spec: LoraAdapterSpec) -> None:
    obs = Observation(spec, SOURCE, COMPATIBLE, ALL3, [loaded("p0"), loaded("p1", "Loading"), loaded("p2", "Loading")])
    status, _ = plan_status(None, 1, "support-v1", obs, NOW)
    assert status["phase"] == "Loading" and status["readyReplicas"] == "1/3"
    assert cond(status, "Loaded")["reason"] == "Loading" and cond(status, "Ready")["status"] == "False"


def test_tampered_artifact_is_not_verified_and_failed(spec: LoraAdapterSpec) -> None:
    bad = loaded("p0", "Failed", reason="DigestMismatch", message="adapter_model.safetensors: sha256 differs")
    obs = Observation(spec, SOURCE, COMPATIBLE, ALL3, [bad, loaded("p1", "Failed", reason="DigestMismatch")])
    status, events = plan_status(None, 1, "support-v1", obs, NOW)
    verified = cond(status, "Verified")
    assert (verified["status"], verified["reason"]) == ("False", "DigestMismatch") and "p0" in verified["message"]
    assert status["phase"] == "Failed" and cond(status, "Loaded")["reason"] == "LoadFailed"
    assert status["placements"][0]["message"].startswith("DigestMismatch: ")
    assert any(e.type == "Warning" and e.reason == "DigestMismatch" for e in events)


def test_waiting_for_the_training_is_pending(spec: LoraAdapterSpec) -> None:
    obs = Observation(spec, Verdict("Unknown", "TrainingPending", "waiting for LoraTraining t (phase Running)"))
    status, events = plan_status(None, 1, "support-v1", obs, NOW)
    assert status["phase"] == "Pending" and cond(status, "Compatible")["reason"] == "SourcePending"
    assert cond(status, "Ready")["reason"] == "TrainingPending" and "artifact" not in status
    assert all(e.reason != "TrainingPending" for e in events), "Unknown is not worth an Event"


def test_incompatible_is_failed_with_the_precise_reason(spec: LoraAdapterSpec) -> None:
    verdict = Verdict("False", "RankTooHigh", "rank 128 exceeds the operator's --max-lora-rank bound 64")
    status, _ = plan_status(None, 1, "support-v1", Observation(spec, SOURCE, verdict, Assignment((), 3)), NOW)
    assert status["phase"] == "Failed" and cond(status, "Ready")["reason"] == "RankTooHigh"
    assert cond(status, "Loaded")["reason"] == "NotCompatible"


def test_no_ready_replicas_and_capacity(spec: LoraAdapterSpec) -> None:
    status, _ = plan_status(None, 1, "n", Observation(spec, SOURCE, COMPATIBLE, Assignment((), 0)), NOW)
    assert cond(status, "Loaded")["reason"] == "NoReadyReplicas" and status["readyReplicas"] == "0/0"
    short = Observation(spec, SOURCE, COMPATIBLE, Assignment(("p0",), 3, short_by_capacity=2), [loaded("p0")])
    status, _ = plan_status(None, 1, "n", short, NOW)
    assert cond(status, "Loaded")["reason"] == "CapacityExceeded" and status["readyReplicas"] == "1/3"


def test_evaluation_gates_ready(examples: dict[str, Any]) -> None:
    spec = LoraAdapterSpec.model_validate(examples["LoraAdapter"]["spec"])
    placements = [loaded("p0"), loaded("p1"), loaded("p2")]
    running = Observation(spec, SOURCE, COMPATIBLE, ALL3, placements, Verdict("Unknown", "Evaluating", "Job x"))
    status, _ = plan_status(None, 1, "a", running, NOW)
    assert status["phase"] == "Evaluating" and cond(status, "Ready")["status"] == "False"
    failed = Observation(spec, SOURCE, COMPATIBLE, ALL3, placements, Verdict("False", "BelowMinDelta", "CI -0.1"))
    status, _ = plan_status(status, 1, "a", failed, NOW)
    assert status["phase"] == "Failed" and cond(status, "Evaluated")["reason"] == "BelowMinDelta"
    passed = Observation(spec, SOURCE, COMPATIBLE, ALL3, placements, Verdict("True", "Passed", "Δ +0.2"))
    status, _ = plan_status(status, 1, "a", passed, NOW)
    assert status["phase"] == "Ready" and cond(status, "Ready")["status"] == "True"


def test_condition_times_move_only_on_change(spec: LoraAdapterSpec) -> None:
    partial = Observation(spec, SOURCE, COMPATIBLE, ALL3, [loaded("p0"), loaded("p1"), loaded("p2", "Loading")])
    first, _ = plan_status(None, 1, "a", partial, NOW)
    done = Observation(spec, SOURCE, COMPATIBLE, ALL3, [loaded("p0"), loaded("p1"), loaded("p2")])
    second, _ = plan_status(first, 1, "a", done, LATER)
    assert cond(second, "Compatible")["lastTransitionTime"] == cond(first, "Compatible")["lastTransitionTime"]
    assert cond(second, "Loaded")["lastTransitionTime"] != cond(first, "Loaded")["lastTransitionTime"]


def test_deletion_blocked_names_the_routes_once() -> None:
    status, events = plan_deletion_status(None, 1, ["support-bot", "vip"], NOW)
    blocked = cond(status, "DeletionBlocked")
    assert status["phase"] == "Deleting" and blocked["status"] == "True" and "support-bot, vip" in blocked["message"]
    assert [e.reason for e in events] == ["DeletionBlocked"]
    assert plan_deletion_status(status, 1, ["support-bot", "vip"], LATER)[1] == [], "no Event storm while waiting"
    released, events = plan_deletion_status(status, 1, [], LATER)
    assert cond(released, "DeletionBlocked")["status"] == "False" and events[0].reason == "Unloading"


def route(name: str, spec: dict[str, Any], traffic: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status = {"traffic": {"entries": traffic}} if traffic else {}
    return {"metadata": {"name": name}, "spec": spec, "status": status}


def test_routes_sending_traffic() -> None:
    routes = [
        route("by-spec", {"adapter": "a"}),
        route("by-tenant", {"tenants": [{"tenants": ["t"], "adapter": "a"}]}),
        route("by-status", {"adapter": "b"}, [{"backends": [{"adapter": "a", "servedName": "a", "weight": 10}]}]),
        route("mirror", {}, [{"backends": [{"servedName": "base", "weight": 100}], "mirror": {"adapter": "a"}}]),
        route("zero-weight", {"adapter": "b"}, [{"backends": [{"adapter": "a", "servedName": "a", "weight": 0}]}]),
        route("other", {"adapter": "b"}),
    ]
    assert routes_sending_to("a", routes) == ["by-spec", "by-status", "by-tenant", "mirror"]


def test_modules_the_agent_finds_unusable_make_it_incompatible(spec: LoraAdapterSpec) -> None:
    refused = loaded("p0", "Failed", reason="IncompatibleModules", message="lm_head is not adaptable by vLLM")
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, [refused]), NOW)
    compatible = cond(status, "Compatible")
    assert (compatible["status"], compatible["reason"]) == ("False", "IncompatibleModules")
    assert "lm_head" in compatible["message"] and cond(status, "Verified")["status"] == "Unknown"
    assert status["phase"] == "Failed"


# ---- issue 10: Effective from the agents' effect probes, Compatible from their module check ----

NO_EFFECT = "all 4 probe prompts answered exactly like base model tiny-llama (text and logprobs)"


def probed(pod: str, effective: bool | None, **extra: Any) -> PlacementView:
    return loaded(pod, effective=effective, **extra)


def test_one_replica_answering_like_the_base_is_no_effect_and_not_ready(spec: LoraAdapterSpec) -> None:
    views = [probed("p0", True), probed("p1", True), probed("p2", False, probe_message=NO_EFFECT)]
    status, events = plan_status(None, 1, "support-v1", Observation(spec, SOURCE, COMPATIBLE, ALL3, views), NOW)
    effective = cond(status, "Effective")
    assert (effective["status"], effective["reason"]) == ("False", "NoEffect")
    assert effective["message"] == f"pod p2: {NO_EFFECT}", "the agent's probeMessage, with the pod"
    assert cond(status, "Loaded")["status"] == "True", "it is loaded: the probe refutes it, not the load"
    assert (cond(status, "Ready")["status"], cond(status, "Ready")["reason"]) == ("False", "NoEffect")
    assert status["phase"] == "Failed" and status["message"].startswith("NoEffect: pod p2")
    assert status["placements"][2]["effective"] is False and status["placements"][2]["message"] == NO_EFFECT
    assert ("Warning", "NoEffect") in [(e.type, e.reason) for e in events]


def test_effective_everywhere_is_ready_and_records_the_probe_latency(spec: LoraAdapterSpec) -> None:
    views = [
        probed(p, True, probe_latency_seconds=0.25 + i, probe_message="4 of 4 differ") for i, p in enumerate(ALL3.pods)
    ]
    status, _ = plan_status(None, 1, "support-v1", Observation(spec, SOURCE, COMPATIBLE, ALL3, views), NOW)
    effective = cond(status, "Effective")
    assert (effective["status"], effective["reason"]) == ("True", "Effective")
    assert "3/3" in effective["message"] and "2.250s" in effective["message"], "the slowest cold request"
    assert status["phase"] == "Ready" and cond(status, "Ready")["status"] == "True"
    assert [p["probeLatencySeconds"] for p in status["placements"]] == [0.25, 1.25, 2.25]
    assert all(p["effective"] is True and "message" not in p for p in status["placements"])


def test_no_probe_verdict_is_unknown_shown_but_does_not_block_ready(spec: LoraAdapterSpec) -> None:
    failed = probed("p0", None, probe_message="probe failed: vLLM answered 500")
    views = [failed, probed("p1", True), probed("p2", True)]
    status, events = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, views), NOW)
    effective = cond(status, "Effective")
    assert (effective["status"], effective["reason"]) == ("Unknown", "NotProbed")
    assert "1/3" in effective["message"] and "probe failed: vLLM answered 500" in effective["message"]
    assert status["phase"] == "Ready" and cond(status, "Ready")["status"] == "True"
    assert status["placements"][0]["message"] == "probe failed: vLLM answered 500"
    assert all(e.type == "Normal" for e in events)
    older = [loaded(p) for p in ALL3.pods]  # an agent older than the probe reports nothing
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, older), NOW)
    assert "older than the probe" in cond(status, "Effective")["message"]
    assert cond(status, "Ready")["status"] == "True"


def test_effective_waits_for_the_load_and_a_later_no_effect_loses_ready(spec: LoraAdapterSpec) -> None:
    loading = [loaded(p, "Loading") for p in ALL3.pods]
    first, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, loading), NOW)
    assert (cond(first, "Effective")["status"], cond(first, "Effective")["reason"]) == ("Unknown", "WaitingForLoad")
    good, _ = plan_status(
        first, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, [probed(p, True) for p in ALL3.pods]), NOW
    )
    assert good["phase"] == "Ready"
    # e.g. a reload after a vLLM restart probed again and found no effect
    bad = [probed("p0", False, probe_message=NO_EFFECT), probed("p1", True), probed("p2", True)]
    lost, events = plan_status(good, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, bad), LATER)
    assert lost["phase"] == "Failed" and cond(lost, "Ready")["reason"] == "NoEffect"
    assert ("Warning", "NoEffect") in [(e.type, e.reason) for e in events]


def test_agent_module_check_refines_compatible(spec: LoraAdapterSpec) -> None:
    checked = [
        probed(
            p,
            True,
            compatibility="Compatible",
            compatibility_message="8 tensors on 4 modules apply to LlamaForCausalLM",
        )
        for p in ALL3.pods
    ]
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, checked), NOW)
    compatible = cond(status, "Compatible")
    assert (compatible["status"], compatible["reason"]) == ("True", "Compatible")
    assert compatible["message"] == "fits; 8 tensors on 4 modules apply to LlamaForCausalLM"

    why = "no module table for architecture PhiForCausalLM"
    unchecked = [probed(p, True, compatibility="UnknownArchitecture", compatibility_message=why) for p in ALL3.pods]
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, unchecked), NOW)
    compatible = cond(status, "Compatible")
    assert (compatible["status"], compatible["reason"]) == ("Unknown", "UnknownArchitecture") and why in compatible[
        "message"
    ]
    assert status["phase"] == "Ready", "not checked is shown, not blocking: the probe proved the effect"

    refused = loaded("p0", "Failed", reason="UnknownArchitecture", message="refused: --unknown-architecture refuse")
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, [refused]), NOW)
    compatible = cond(status, "Compatible")
    assert (compatible["status"], compatible["reason"]) == ("False", "UnknownArchitecture")
    assert status["phase"] == "Failed" and cond(status, "Verified")["status"] == "Unknown"

    names = (
        "base_model.model.transformer.h.0.attn.q_proj.lora_A.weight (prefix), "
        "lm_head.lora_A.weight (not a module vLLM applies LoRA to)"
    )
    wrong = loaded("p1", "Failed", reason="IncompatibleModules", message=names)
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, [wrong]), NOW)
    assert cond(status, "Compatible")["message"] == f"pod p1: {names}", "every offending name the agent listed"
    preflight = Verdict("False", "RankTooHigh", "rank 128")
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, preflight, ALL3, unchecked), NOW)
    assert cond(status, "Compatible")["reason"] == "RankTooHigh", "the preflight's refusal comes first"


def test_manifest_base_model_must_be_the_spec_base_model(spec: LoraAdapterSpec) -> None:
    same = [probed(p, True, manifest_base_model=spec.base_model) for p in ALL3.pods]
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, same), NOW)
    assert cond(status, "Compatible")["status"] == "True" and status["phase"] == "Ready"
    other = [probed(p, True, manifest_base_model="mistralai/Mistral-7B-v0.3") for p in ALL3.pods]
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, other), NOW)
    compatible = cond(status, "Compatible")
    assert (compatible["status"], compatible["reason"]) == ("False", "ManifestBaseModelMismatch")
    assert "Mistral-7B-v0.3" in compatible["message"] and status["phase"] == "Failed"
    plain = [probed(p, True, manifest_base_model=None) for p in ALL3.pods]
    status, _ = plan_status(None, 1, "a", Observation(spec, SOURCE, COMPATIBLE, ALL3, plain), NOW)
    assert status["phase"] == "Ready", "a plain PEFT folder has no manifest: nothing to compare"
