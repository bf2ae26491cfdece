"""LoraTraining planner, part two: status from what is observed (pure; Job, pods, log tail → status, events).

Kubernetes tells the facts in several places — the Job's conditions, each pod's scheduling condition and
container states, the trainer's termination message and its progress lines — and a platform engineer wants
one answer: how far is it, and if it is stuck or failed, why, in words they can act on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loraops.api.common import Condition, ConditionStatus
from loraops.api.training import LoraTrainingStatus, TrainingOutput, TrainingProgress
from loraops.kube.conditions import Event, EventType, find, is_transition, set_condition

from .planner import CONTAINER, EXIT_CONFIG, EXIT_INTEGRITY

Obj = dict[str, Any]
IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
LOG_TAIL_IN_MESSAGE = 5


@dataclass(frozen=True)
class Observed:
    job: Obj | None
    pods: list[Obj] = field(default_factory=list)
    log_tail: str = ""
    """The last lines of the rank-0 pod's stdout (the trainer's JSON progress lines)."""


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _job_condition(job: Obj | None, type_: str) -> Obj | None:
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def _json_lines(text: str) -> list[Obj]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def rank_zero_pod(pods: list[Obj]) -> Obj | None:
    """The newest pod of completion index 0 (or the only pod of a plain Job)."""

    def index(pod: Obj) -> str:
        annotations = pod.get("metadata", {}).get("annotations") or {}
        return str(annotations.get("batch.kubernetes.io/job-completion-index", "0"))

    candidates = [p for p in pods if index(p) == "0"]
    return max(candidates, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)


def _terminated(pod: Obj) -> Obj | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            state = status.get("state") or {}
            last = status.get("lastState") or {}
            return state.get("terminated") or last.get("terminated")
    return None


def _waiting_reason(pod: Obj) -> tuple[str, str] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in IMAGE_PULL_REASONS:
            return waiting["reason"], waiting.get("message", "")
    return None


def _unschedulable(pod: Obj) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        scheduled = condition.get("type") == "PodScheduled" and condition.get("status") == "False"
        if scheduled and condition.get("reason") == "Unschedulable":
            return str(condition.get("message") or "no node can run the pod")
    return None


def _result(observed: Observed) -> Obj | None:
    """The trainer's final record: the termination message first (needs no log access), then the log."""
    pod = rank_zero_pod(observed.pods)
    terminated = _terminated(pod) if pod else None
    for record in reversed(_json_lines((terminated or {}).get("message", "")) + _json_lines(observed.log_tail)):
        if record.get("event") in ("result", "error"):
            return record
    return None


def _progress(observed: Observed, previous: TrainingProgress | None, now: datetime) -> TrainingProgress | None:
    lines = [r for r in _json_lines(observed.log_tail) if r.get("event") == "progress"]
    if not lines:
        return previous
    last = lines[-1]
    total = int(last.get("total_steps") or 0)
    step = int(last.get("step") or 0)
    progress = TrainingProgress(
        step=step,
        total_steps=total,
        percent=min(100, int(100 * step / total)) if total else 0,
        loss=last.get("loss"),
        tokens_per_second=last.get("tokens_per_second"),
        eta_seconds=last.get("eta_seconds"),
        updated_at=now,
    )
    if previous and previous.model_copy(update={"updated_at": None}) == progress.model_copy(
        update={"updated_at": None}
    ):
        return previous
    return progress


def _failure(observed: Observed, job_failed: Obj) -> tuple[str, str]:
    """(reason, message) of a failed Job, most specific cause first."""
    record = _result(observed) or {}
    pods = observed.pods
    exit_codes = [(_terminated(p) or {}).get("exitCode") for p in pods]
    if any((_terminated(p) or {}).get("reason") == "OOMKilled" for p in pods):
        return "OOMKilled", "the trainer ran out of memory: lower batchSize or maxSeqLength, or use qlora / more GPUs"
    if job_failed.get("reason") == "DeadlineExceeded":
        return (
            "DeadlineExceeded",
            f"the training ran longer than runPolicy.activeDeadlineSeconds: {job_failed.get('message', '')}",
        )
    if EXIT_CONFIG in exit_codes or record.get("exit_code") == EXIT_CONFIG:
        detail = f"{record.get('reason', 'InvalidConfig')}: {record.get('message', 'see the pod log')}"
        return "InvalidConfig", f"the trainer rejected its input (not retried): {detail}"
    if EXIT_INTEGRITY in exit_codes or record.get("exit_code") == EXIT_INTEGRITY:
        return "IntegrityFailed", f"a digest did not match (not retried): {record.get('message', 'see the pod log')}"
    tail = " | ".join(observed.log_tail.strip().splitlines()[-LOG_TAIL_IN_MESSAGE:])
    last_code = next((c for c in reversed(exit_codes) if c is not None), None)
    detail = record.get("message") or tail or job_failed.get("message", "")
    return "BackoffLimitExceeded", f"every attempt failed (last exit code {last_code}): {detail}"


def plan_status(
    current: dict[str, Any] | None, generation: int | None, job_name: str, observed: Observed, now: datetime
) -> tuple[dict[str, Any], list[Event]]:
    """The new status and the Events that explain its transitions."""
    status = LoraTrainingStatus.model_validate(current or {})
    conditions: list[Condition] | None = status.conditions
    events: list[Event] = []

    def condition(
        type_: str, value: ConditionStatus, reason: str, message: str, event_type: EventType | None = None
    ) -> None:
        nonlocal conditions
        before = find(conditions, type_)
        conditions = set_condition(conditions, type_, value, reason, message, generation, now)
        if event_type and is_transition(before, value, reason):
            events.append(Event(event_type, reason, message))

    conditions = set_condition(conditions, "Accepted", "True", "SpecValid", "the spec is valid", generation, now)
    job = observed.job
    progress = _progress(observed, status.progress, now)
    output = status.output
    completion_time = status.completion_time
    job_status = (job or {}).get("status") or {}
    start_time = _time(job_status.get("startTime")) or status.start_time
    complete, failed = _job_condition(job, "Complete"), _job_condition(job, "Failed")

    if job is None:
        phase, message = "Pending", "creating the training Job"
        condition("Running", "False", "JobPending", message)
    elif complete:
        phase = "Succeeded"
        record = _result(observed) or {}
        if record.get("digest") and record.get("output_uri"):
            metrics = {k: float(v) for k, v in (record.get("metrics") or {}).items() if isinstance(v, int | float)}
            signed = record.get("signature_digest")
            output = TrainingOutput(
                uri=record["output_uri"],
                sha256=record["digest"],
                signature_digest=signed if isinstance(signed, str) and len(signed) == 64 else None,
                metrics=metrics or None,
            )
            message = f"trained {record.get('steps', '?')} steps; adapter {output.sha256[:12]} at {output.uri}"
            condition("Succeeded", "True", "Completed", message, "Normal")
        else:
            message = "the Job completed but the trainer reported no result (termination message and log empty)"
            condition("Succeeded", "False", "OutputMissing", message, "Warning")
        if progress and progress.total_steps:
            progress = progress.model_copy(update={"step": progress.total_steps, "percent": 100, "eta_seconds": 0.0})
        completion_time = _time(job_status.get("completionTime")) or completion_time or now
        condition("Running", "False", "Completed", "the Job completed")
    elif failed:
        phase = "Failed"
        reason, message = _failure(observed, failed)
        condition("Failed", "True", reason, message, "Warning")
        condition("Running", "False", reason, message)
        completion_time = completion_time or now
    elif (job.get("spec") or {}).get("suspend"):
        phase, message = "Suspended", "the Job is suspended (spec.suspend); it resumes from the last checkpoint"
        condition("Running", "False", "Suspended", message, "Normal")
    else:
        phase, message = _active(observed, condition)

    updated = status.model_copy(
        update={
            "phase": phase,
            "job_name": job_name,
            "start_time": start_time,
            "completion_time": completion_time,
            "progress": progress,
            "output": output,
            "message": message,
            "observed_generation": generation,
            "conditions": conditions,
        }
    )
    return updated.wire(), events


def _active(observed: Observed, condition: Any) -> tuple[str, str]:
    pods = observed.pods
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    for pod in pods:
        if (pulled := _waiting_reason(pod)) is not None:
            message = f"pod {pod['metadata']['name']} cannot pull its image ({pulled[0]}): {pulled[1]}".rstrip(": ")
            condition("Running", "False", "ImagePullFailed", message, "Warning")
            return "Pending", message
        if (why := _unschedulable(pod)) is not None:
            message = f"pod {pod['metadata']['name']} cannot be scheduled: {why}"
            condition("Running", "False", "Unschedulable", message, "Warning")
            return "Pending", message
    if running:
        oom = [p for p in pods if (_terminated(p) or {}).get("reason") == "OOMKilled"]
        message = f"{len(running)} of {max(len(pods), 1)} pods running"
        if oom:
            message += f"; an earlier attempt was OOMKilled ({oom[-1]['metadata']['name']}), resumed from checkpoint"
        condition("Running", "True", "PodsRunning", message, "Normal")
        return "Running", message
    message = "waiting for the training pods to start"
    condition("Running", "False", "PodsPending", message)
    return "Pending", message
