"""Placement (pure): which pods of a vLLM Deployment hold which adapters, and the agent calls that gets there.

One plan covers every adapter targeting the Deployment, so each adapter's reconcile — running on its own —
computes the same answer for the others and only acts on its own share. Rules:

- an adapter wants every eligible pod (a ready pod with an agent), or `serving.replicas` of them;
- each pod holds at most `capacity` adapters (the Deployment's `--max-cpu-loras`);
- older adapters are placed first (creation time, then name), so a new adapter never pushes out one that
  already serves: when capacity runs out, the newest adapters are the ones left short;
- a pod that already holds the adapter is kept (no churn on every reconcile), then the least-loaded pods,
  then by name (deterministic);
- a pod's slots are what its agent holds (loaded, loading or unloading, whoever wants it) plus what the plan adds:
  an unload frees a slot only once the agent no longer lists the adapter, never because the plan moved it away
  (vLLM may even keep the engine slot after an unload, vLLM issue 54839; see docs/adapters.md).

Each release is served under its own name, `<adapter>-<first 12 hex of the digest>` (`served_name`), so two
releases never share a name, a response names one digest, and vLLM's `load_inplace` is never needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from loraops.agent.models import SHORT_DIGEST, AdapterRecord

TERMINAL_REASONS = frozenset(
    {
        "DigestMismatch",
        "UnsafePath",
        "Symlink",
        "TooLarge",
        "TooManyFiles",
        "SourceNotFound",
        "AccessDenied",
        "MissingCredentials",
        "InvalidManifest",
        "ArtifactMissing",
        "InvalidUri",
        "UnsupportedScheme",
        "ForbiddenPath",
        "CredentialsUnavailable",
        "InvalidDigest",
        "InvalidName",
        "InvalidRequest",
        "UnsafeFormat",
        "IncompatibleModules",
        "SignatureInvalid",
        "SignatureMissing",
        "UnknownArchitecture",
        "InvalidAdapter",
        "InvalidWeights",
        "ConversionFailed",
    }
)
"""Agent reasons that say the artifact (or the request for it) is unusable: retrying cannot help."""
AGENT_COMPATIBILITY_REASONS = frozenset({"IncompatibleModules", "UnknownArchitecture"})
"""The agent read the adapter's tensors and found modules vLLM would load but not apply, or (with
`--unknown-architecture refuse`) could not check them: not Compatible."""
NAME_LIMIT = 253
"""The agent's (and vLLM's) name limit."""
HOLDING_STATES = frozenset({"Loaded", "Loading", "Unloading"})
"""Record states that occupy a slot of vLLM (a Failed record holds nothing)."""


def served_name(name: str, digest: str) -> str:
    """The name a release is served under: `<adapter>-<first 12 hex of its digest>`. Two releases of one adapter
    (two LoraAdapters, or a trainingRef whose output changed) never share it, and every answer (`model` in the
    response) names exactly one digest."""
    suffix = f"-{digest.removeprefix('sha256:')[:SHORT_DIGEST]}"
    return f"{name[: NAME_LIMIT - len(suffix)]}{suffix}"


TRANSIENT_REASONS = frozenset({"VllmUnavailable", "StorageUnavailable", "AgentUnavailable"})
"""Reasons that mean "not yet": the agent keeps a verified adapter and loads it once vLLM answers."""
INTEGRITY_REASONS = frozenset(
    {
        "DigestMismatch",
        "UnsafePath",
        "Symlink",
        "InvalidManifest",
        "ArtifactMissing",
        "SignatureInvalid",
        "SignatureMissing",
    }
)
"""Agent reasons that mean the bytes are not the release: the adapter is not Verified."""


@dataclass(frozen=True)
class PodView:
    """One pod of the Deployment as observed: readiness, its agent's URL and what the agent holds."""

    name: str
    ready: bool
    url: str | None
    records: dict[str, AdapterRecord] | None = None
    """The agent's records by adapter name; None when the agent did not answer."""
    error: str | None = None
    """Why the agent could not be read."""

    @property
    def eligible(self) -> bool:
        return self.ready and self.url is not None


@dataclass(frozen=True)
class AdapterWant:
    name: str
    created: str
    """creationTimestamp (RFC 3339 sorts as text): older adapters are placed first."""
    replicas: int | None = None
    placeable: bool = True
    """False while the adapter cannot be loaded (unresolved source, incompatible): it takes no capacity."""


@dataclass(frozen=True)
class Assignment:
    pods: tuple[str, ...]
    wanted: int
    """Replicas wanted: `serving.replicas`, or every eligible pod."""
    short_by_capacity: int = 0
    """Replicas not assigned because every other eligible pod is full."""


def held(pod: PodView) -> frozenset[str]:
    """Adapters that occupy a slot on the pod as its agent reports them (any adapter, wanted or not)."""
    return frozenset(n for n, r in (pod.records or {}).items() if r.state in HOLDING_STATES)


def plan_placement(adapters: list[AdapterWant], pods: list[PodView], capacity: int) -> dict[str, Assignment]:
    eligible = sorted((p for p in pods if p.eligible), key=lambda p: p.name)
    holding = {p.name: held(p) for p in eligible}
    # What the agent holds counts until it is gone: an adapter the plan moves away, an orphan, or one being
    # deleted still takes its slot while its DELETE is pending (concurrent with the PUTs of this reconcile).
    load = {p.name: len(holding[p.name]) for p in eligible}
    plan: dict[str, Assignment] = {}
    for adapter in sorted(adapters, key=lambda a: (a.created, a.name)):
        wanted = adapter.replicas if adapter.replicas is not None else len(eligible)
        if not adapter.placeable:
            plan[adapter.name] = Assignment((), wanted)
            continue
        reachable = min(wanted, len(eligible))
        free = [p for p in eligible if adapter.name in holding[p.name] or load[p.name] < max(capacity, 0)]

        def preference(pod: PodView, name: str = adapter.name) -> tuple[int, int, str]:
            holds = pod.records is not None and name in pod.records
            return (0 if holds else 1, load[pod.name], pod.name)

        chosen = sorted(free, key=preference)[:reachable]
        for pod in chosen:
            if adapter.name not in holding[pod.name]:  # a held adapter's slot is already counted
                load[pod.name] += 1
        plan[adapter.name] = Assignment(
            tuple(sorted(p.name for p in chosen)), wanted, short_by_capacity=reachable - len(chosen)
        )
    return plan


@dataclass
class Actions:
    put: list[str] = field(default_factory=list)
    """Pods whose agent must be told to hold the adapter (PUT)."""
    delete: list[str] = field(default_factory=list)
    """Pods whose agent must drop it (DELETE)."""


def plan_actions(name: str, digest: str | None, assignment: Assignment, pods: list[PodView]) -> Actions:
    """Agent calls for one adapter. A pod is told only what it lacks: a Loaded record of the same digest
    needs nothing, a Loading one is the agent's own work in progress (it loads when vLLM answers), a Failed
    one is retried. Pods whose agent did not answer are left for the next reconcile."""
    actions = Actions()
    chosen = set(assignment.pods)
    for pod in pods:
        if not pod.eligible or pod.records is None:
            continue
        record = pod.records.get(name)
        if pod.name in chosen and digest is not None:
            same = record is not None and record.digest.removeprefix("sha256:") == digest
            if not same or (record is not None and record.state in ("Failed", "Unloading")):
                actions.put.append(pod.name)
        elif record is not None and pod.name not in chosen:
            actions.delete.append(pod.name)
    return actions


@dataclass(frozen=True)
class Outcome:
    """What one agent said for one adapter during this reconcile."""

    record: AdapterRecord | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class PlacementView:
    pod: str
    state: str
    digest: str | None = None
    served_name: str | None = None
    loaded_at: datetime | None = None
    reason: str | None = None
    message: str | None = None
    size: int | None = None
    files: int | None = None
    signer: str | None = None
    """Who signed, when the agent verified a signature before the load (issue 9)."""
    signature_digest: str | None = None
    signature_verified_at: datetime | None = None
    effective: bool | None = None
    """The agent's effect probe of this load: False answers exactly like the base model (NoEffect); None not
    probed (probe disabled or failed, or an agent older than the probe)."""
    probe_latency_seconds: float | None = None
    probe_message: str | None = None
    compatibility: str | None = None
    """`Compatible` (the agent checked tensor names and target modules) or `UnknownArchitecture` (not checked)."""
    compatibility_message: str | None = None
    manifest_base_model: str | None = None
    """The base model the adapter's loraops manifest names (None: no manifest, e.g. a plain PEFT folder)."""


def placements(
    name: str,
    digest: str | None,
    assignment: Assignment,
    pods: list[PodView],
    outcomes: dict[str, Outcome],
) -> list[PlacementView]:
    """Per pod: the agent's latest word on the adapter (the call just made, else the record listed)."""
    views: list[PlacementView] = []
    by_name = {p.name: p for p in pods}
    chosen = set(assignment.pods)
    names = sorted(chosen | {p.name for p in pods if p.records and name in p.records})
    for pod_name in names:
        pod = by_name.get(pod_name)
        outcome = outcomes.get(pod_name, Outcome())
        record = outcome.record
        if record is None and outcome.reason is None and pod is not None and pod.records is not None:
            record = pod.records.get(name)
        if pod_name not in chosen:
            if outcome.reason is None and outcome.record is None and pod_name in outcomes:
                continue  # unloaded just now
            views.append(PlacementView(pod_name, "Unloading", record.digest if record else None))
            continue
        if outcome.reason is not None:
            state = "Loading" if outcome.reason in TRANSIENT_REASONS else "Failed"
            views.append(PlacementView(pod_name, state, digest, reason=outcome.reason, message=outcome.message))
        elif record is not None and record.digest.removeprefix("sha256:") == digest:
            views.append(
                PlacementView(
                    pod_name,
                    record.state,
                    digest,
                    record.served_name,
                    record.loaded_at,
                    record.reason,
                    record.message,
                    record.size,
                    record.files,
                    record.signer,
                    record.signature_digest,
                    record.signature_verified_at,
                    record.effective,
                    record.probe_latency_seconds,
                    record.probe_message,
                    record.compatibility,
                    record.compatibility_message,
                    record.manifest_base_model,
                )
            )
        elif pod is not None and pod.records is None:
            views.append(PlacementView(pod_name, "Loading", digest, message=f"agent unavailable: {pod.error}"))
        else:
            views.append(PlacementView(pod_name, "Loading", digest, message="waiting for the agent"))
    return views
