"""LoraAdapter status (pure): conditions, phase and the summary columns from what one reconcile observed.

Ready = Verified ∧ Compatible ∧ Loaded ∧ Effective (∧ Evaluated when `spec.evaluation` is set). Each condition
carries the precise reason of the first thing in its way; Events are emitted on transitions only, so a resync
every few minutes does not repeat them.

`Effective` and the agents' `Compatible` verdict may be Unknown (an agent older than the probe, a probe that
failed or was disabled, an architecture the agent has no module table for): that is shown, but it does not
block Ready — a True is something an agent proved, a False something it refuted, and an Unknown neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loraops.api.adapter import (
    EvaluationResult,
    LoraAdapterSpec,
    LoraAdapterStatus,
    Placement,
    ReleaseSummary,
    ResolvedArtifact,
)
from loraops.api.common import Condition
from loraops.kube.conditions import Event, find, is_transition, set_condition

from .placement import AGENT_COMPATIBILITY_REASONS, INTEGRITY_REASONS, TERMINAL_REASONS, Assignment, PlacementView
from .preflight import Source, Verdict
from .signature import signature_status

CONDITIONS = ("Verified", "Compatible", "Loaded", "Effective", "Evaluated")
SOFT = {("Compatible", "UnknownArchitecture"), ("Effective", "NotProbed")}
"""(condition, reason) pairs that are Unknown for good, not a wait: shown, but they do not block Ready."""
TERMINAL_EVAL_REASONS = {"BelowMinDelta", "SliceRegression", "EvaluationFailed", "GoldenSetUnavailable"}


@dataclass
class Observation:
    """Everything the status is computed from."""

    spec: LoraAdapterSpec
    source: Source | Verdict
    compatible: Verdict | None = None
    """None while the source is unresolved."""
    assignment: Assignment | None = None
    placements: list[PlacementView] = field(default_factory=list)
    evaluation: Verdict | None = None
    """None when `spec.evaluation` is unset."""
    evaluation_result: EvaluationResult | None = None
    deployment_changes: list[str] = field(default_factory=list)
    """What the Deployment patch of this reconcile changed (for an Event)."""


def _verified(obs: Observation) -> Verdict:
    if isinstance(obs.source, Verdict):
        return obs.source
    digest = obs.source.digest
    bad = [p for p in obs.placements if p.state == "Failed" and p.reason in INTEGRITY_REASONS]
    if bad:
        first = bad[0]
        return Verdict("False", first.reason or "DigestMismatch", f"pod {first.pod}: {first.message or ''}".strip())
    refused = [
        p
        for p in obs.placements
        if p.state == "Failed" and p.reason in TERMINAL_REASONS and p.reason not in AGENT_COMPATIBILITY_REASONS
    ]
    if refused:
        first = refused[0]
        return Verdict("False", first.reason or "ArtifactRefused", f"pod {first.pod}: {first.message or ''}".strip())
    loaded = [p for p in obs.placements if p.state == "Loaded" and p.digest == digest]
    if loaded and obs.spec.source.signature is not None:
        signed = [p for p in loaded if p.signature_digest]
        if not signed:
            return Verdict("Unknown", "AwaitingSignatureCheck", "no agent has verified the signature yet")
        return Verdict(
            "True",
            "SignatureVerified",
            f"every file matches digest {digest[:12]}… and the signature of {signed[0].signer} "
            f"(verified by the agents of {len(signed)} pod(s))",
        )
    if loaded:
        return Verdict(
            "True",
            "DigestVerified",
            f"every file matches digest {digest[:12]}… (verified by the agents of {len(loaded)} pod(s))",
        )
    return Verdict("Unknown", "AwaitingAgent", "no agent has verified the artifact yet")


def _loaded(obs: Observation) -> tuple[Verdict, int, int]:
    assignment = obs.assignment or Assignment((), 0)
    loaded = sum(1 for p in obs.placements if p.state == "Loaded" and p.pod in assignment.pods)
    wanted = assignment.wanted
    deployment = obs.spec.serving.deployment
    if obs.compatible is None:
        return Verdict("Unknown", "SourcePending", "waiting for the source"), loaded, wanted
    if obs.compatible.status != "True":
        return Verdict("False", "NotCompatible", "not loaded: see condition Compatible"), loaded, wanted
    if wanted == 0:
        message = f"no ready pod of Deployment {deployment} runs the loraops agent yet"
        return Verdict("False", "NoReadyReplicas", message), loaded, wanted
    if loaded >= wanted:
        return Verdict("True", "AllReplicasLoaded", f"loaded on {loaded}/{wanted} replicas"), loaded, wanted
    failed = [p for p in obs.placements if p.state == "Failed" and p.pod in assignment.pods]
    if failed:
        first = failed[0]
        message = f"loaded on {loaded}/{wanted}; pod {first.pod}: {first.reason}: {first.message or ''}".strip()
        return Verdict("False", "LoadFailed", message), loaded, wanted
    if assignment.short_by_capacity:
        message = (
            f"loaded on {loaded}/{wanted}; {assignment.short_by_capacity} replica(s) cannot be placed: every other "
            f"ready pod holds --max-cpu-loras adapters (older adapters keep their places)"
        )
        return Verdict("False", "CapacityExceeded", message), loaded, wanted
    if len(assignment.pods) < wanted:
        message = f"loaded on {loaded}/{wanted}; only {len(assignment.pods)} ready pod(s) run the agent"
        return Verdict("False", "NotEnoughReplicas", message), loaded, wanted
    return Verdict("False", "Loading", f"loaded on {loaded}/{wanted} replicas"), loaded, wanted


def current_loads(obs: Observation) -> list[PlacementView]:
    """Placements loaded with this release's digest on the pods it is assigned to."""
    assignment = obs.assignment or Assignment((), 0)
    digest = obs.source.digest if isinstance(obs.source, Source) else None
    return [p for p in obs.placements if p.state == "Loaded" and p.pod in assignment.pods and p.digest == digest]


def effective(obs: Observation) -> Verdict:
    """Condition `Effective` from the agents' effect probes: one pod whose probe saw base-model answers is
    enough to refuse (the same bytes answer the same everywhere; a replica that differs would be a bug)."""
    loads = current_loads(obs)
    if not loads:
        return Verdict("Unknown", "WaitingForLoad", "the effect probe runs on each replica after the load")
    no_effect = [p for p in loads if p.effective is False]
    if no_effect:
        first = no_effect[0]
        message = first.probe_message or "every probe answer equalled the base model's"
        return Verdict("False", "NoEffect", f"pod {first.pod}: {message}")
    unprobed = [p for p in loads if p.effective is None]
    if unprobed:
        first = unprobed[0]
        why = first.probe_message or "the agent reported no effect probe (an agent older than the probe?)"
        shown = f"not shown to differ from the base model on {len(unprobed)}/{len(loads)} replica(s)"
        return Verdict("Unknown", "NotProbed", f"{shown}; pod {first.pod}: {why}")
    latencies = [p.probe_latency_seconds for p in loads if p.probe_latency_seconds is not None]
    warm = f"; pre-warmed, first request {max(latencies):.3f}s at most" if latencies else ""
    first_message = loads[0].probe_message
    detail = f" ({first_message})" if first_message else ""
    return Verdict(
        "True", "Effective", f"answers differ from the base model on {len(loads)}/{len(loads)} replica(s){detail}{warm}"
    )


def agent_compatibility(obs: Observation, preflight: Verdict) -> Verdict:
    """Condition `Compatible`: the preflight (spec against the Deployment), refined by what the agents found
    in the files — a refusal (`IncompatibleModules` listing the tensors, or `UnknownArchitecture` with
    `--unknown-architecture refuse`), or a load the agent could not check (UnknownArchitecture: Unknown)."""
    if preflight.status != "True":
        return preflight
    refused = (p for p in obs.placements if p.state == "Failed" and p.reason in AGENT_COMPATIBILITY_REASONS)
    mismatch = next(refused, None)
    if mismatch is not None:
        # The agent read the tensors: what the spec claims is not what the files hold.
        message = f"pod {mismatch.pod}: {mismatch.message or ''}".strip()
        return Verdict("False", mismatch.reason or "IncompatibleModules", message)
    loads = current_loads(obs)
    trained_for = next((p for p in loads if p.manifest_base_model not in (None, obs.spec.base_model)), None)
    if trained_for is not None:
        # The manifest is the trainer's record of the base it trained on: another base serves garbage.
        message = (
            f"the adapter's manifest says it was trained on {trained_for.manifest_base_model}, "
            f"spec.baseModel is {obs.spec.base_model} (pod {trained_for.pod})"
        )
        return Verdict("False", "ManifestBaseModelMismatch", message)
    unchecked = next((p for p in loads if p.compatibility == "UnknownArchitecture"), None)
    if unchecked is not None:
        why = unchecked.compatibility_message or "the agent has no module table for the base model's architecture"
        return Verdict(
            "Unknown",
            "UnknownArchitecture",
            f"{preflight.message}; target modules not checked on pod {unchecked.pod}: {why} "
            "(the effect probe still catches an adapter that changes nothing)",
        )
    checked = next((p for p in loads if p.compatibility == "Compatible" and p.compatibility_message), None)
    if checked is not None:
        return Verdict("True", "Compatible", f"{preflight.message}; {checked.compatibility_message}")
    return preflight


def _phase(verdicts: dict[str, Verdict], ready: bool) -> str:
    if ready:
        return "Ready"
    verified, compatible = verdicts["Verified"], verdicts["Compatible"]
    if verified.reason in ("TrainingPending", "TrainingNotFound") or compatible.reason == "DeploymentNotFound":
        return "Pending"
    if verified.status == "False" or compatible.status == "False" or verdicts["Effective"].status == "False":
        return "Failed"
    evaluated = verdicts.get("Evaluated")
    if evaluated is not None and evaluated.status == "False" and evaluated.reason in TERMINAL_EVAL_REASONS:
        return "Failed"
    if verdicts["Loaded"].status != "True":
        # The agents verify while they load: until one has, the adapter is Verifying.
        return "Loading" if verified.status == "True" else "Verifying"
    return "Evaluating"


def plan_status(
    current: dict[str, Any] | None, generation: int | None, name: str, obs: Observation, now: datetime
) -> tuple[dict[str, Any], list[Event]]:
    status = LoraAdapterStatus.model_validate(current or {})
    conditions: list[Condition] | None = set_condition(
        status.conditions, "Accepted", "True", "SpecValid", "the spec is valid", generation, now
    )
    events: list[Event] = []

    def put(type_: str, verdict: Verdict, quiet: bool = False) -> None:
        nonlocal conditions
        before = find(conditions, type_)
        conditions = set_condition(conditions, type_, verdict.status, verdict.reason, verdict.message, generation, now)
        changed = is_transition(before, verdict.status, verdict.reason)
        # Ready repeats another condition's reason: it is worth an Event only when it is won or lost.
        lost = before is not None and before.status == "True" and verdict.status != "True"
        # Others: a Warning when they turn False; their success is summed up by Ready's one Normal Event (50
        # adapters applied at once would otherwise post hundreds of Events that say little).
        worth = (verdict.status == "True" or lost) if quiet else verdict.status == "False"
        if changed and worth:
            events.append(Event("Normal" if verdict.status == "True" else "Warning", verdict.reason, verdict.message))

    verdicts: dict[str, Verdict] = {"Verified": _verified(obs)}
    verdicts["Compatible"] = agent_compatibility(
        obs, obs.compatible or Verdict("Unknown", "SourcePending", "waiting for the source")
    )
    loaded, count, wanted = _loaded(obs)
    verdicts["Loaded"] = loaded
    verdicts["Effective"] = effective(obs)
    if obs.evaluation is not None:
        verdicts["Evaluated"] = obs.evaluation
    elif find(conditions, "Evaluated") is not None:
        conditions = [c for c in conditions or [] if c.type != "Evaluated"]  # evaluation was removed from spec
    for type_ in CONDITIONS:
        if type_ in verdicts:
            put(type_, verdicts[type_])
    ready = all(v.status == "True" or (k, v.reason) in SOFT for k, v in verdicts.items())
    # What stands in the way: a refusal before a wait (an unknown Verified must not hide an incompatibility).
    blocking = next((v for v in verdicts.values() if v.status == "False"), None) or next(
        (v for k, v in verdicts.items() if v.status != "True" and (k, v.reason) not in SOFT), None
    )
    served = next((p.served_name for p in obs.placements if p.state == "Loaded" and p.served_name), None)
    served = served or status.served_name
    if ready:
        put("Ready", Verdict("True", "Ready", f"serving as {served or name} on {count}/{wanted} replicas"), quiet=True)
    else:
        assert blocking is not None
        put("Ready", Verdict("False", blocking.reason, blocking.message), quiet=True)
    if obs.deployment_changes:
        changes = ", ".join(obs.deployment_changes)
        events.append(Event("Normal", "DeploymentPatched", f"Deployment {obs.spec.serving.deployment}: {changes}"))

    artifact = status.artifact
    if isinstance(obs.source, Source):
        sized = next((p for p in obs.placements if p.state == "Loaded" and p.digest == obs.source.digest), None)
        artifact = ResolvedArtifact(
            uri=obs.source.uri,
            digest=obs.source.digest,
            size_bytes=sized.size if sized else (artifact.size_bytes if artifact else None),
            files=sized.files if sized else (artifact.files if artifact else None),
        )
    spec = obs.spec
    release = ReleaseSummary(
        version=spec.release.version,
        digest=obs.source.digest if isinstance(obs.source, Source) else None,
        dataset_version=spec.release.dataset_version,
        prompt_version=spec.release.prompt_version,
        merge_state=spec.release.merge_state,
        owner=spec.provenance.owner,
        license=spec.provenance.license,
        trained_by=spec.source.training_ref.name if spec.source.training_ref else None,
    )
    placements = [
        Placement(
            pod=p.pod,
            state=p.state,
            digest=p.digest,
            served_name=p.served_name,
            loaded_at=p.loaded_at,
            message=(
                f"{p.reason}: {p.message}"
                if p.reason and p.state == "Failed"
                # A probe that refuted or could not judge the load is worth reading on the pod's line.
                else p.message or (p.probe_message if p.state == "Loaded" and p.effective is not True else None)
            )
            or None,
            effective=p.effective,
            probe_latency_seconds=p.probe_latency_seconds,
        )
        for p in obs.placements
    ]
    updated = status.model_copy(
        update={
            "phase": _phase(verdicts, ready),
            "artifact": artifact,
            "served_name": served,
            "evaluation": obs.evaluation_result or status.evaluation if spec.evaluation else None,
            "placements": placements,
            "ready_replicas": f"{count}/{wanted}",
            "release": release,
            "signature": (
                signature_status(obs.placements, obs.source.digest if isinstance(obs.source, Source) else None)
                or (status.signature if spec.source.signature is not None else None)
            ),
            "message": (
                f"Ready: serving as {served or name} on {count}/{wanted} replicas"
                if ready
                else f"{blocking.reason}: {blocking.message}"
                if blocking
                else None
            ),
            "observed_generation": generation,
            "conditions": conditions,
        }
    )
    return updated.wire(), events


def plan_deletion_status(
    current: dict[str, Any] | None, generation: int | None, routes: list[str], now: datetime
) -> tuple[dict[str, Any], list[Event]]:
    """While routes send traffic to the adapter: phase Deleting, condition DeletionBlocked naming them."""
    status = LoraAdapterStatus.model_validate(current or {})
    before = find(status.conditions, "DeletionBlocked")
    if routes:
        message = f"AdapterRoute(s) {', '.join(routes)} still send traffic to this adapter; move them first"
        conditions = set_condition(
            status.conditions, "DeletionBlocked", "True", "RoutedTraffic", message, generation, now
        )
        event = Event("Warning", "DeletionBlocked", message)
    else:
        message = "no route sends traffic here: unloading from every pod"
        conditions = set_condition(status.conditions, "DeletionBlocked", "False", "Unloading", message, generation, now)
        event = Event("Normal", "Unloading", message)
    changed = before is None or before.status != ("True" if routes else "False") or before.message != message
    updated = status.model_copy(update={"phase": "Deleting", "message": message, "conditions": conditions})
    return updated.wire(), [event] if changed else []
