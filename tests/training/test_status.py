"""LoraTraining status from what Kubernetes shows: phases, progress, output, failure reasons, Events."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loraops.api.training import LoraTrainingSpec, LoraTrainingStatus
from loraops.api.validation import validate
from loraops.training.lineage import adapter_from_template
from loraops.training.status import Observed, plan_status

pytestmark = pytest.mark.training

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32
CONFIG_ERROR = json.dumps(
    {"event": "error", "exit_code": 3, "reason": "TargetModuleNotFound", "message": "q_proj not in model; use c_attn"}
)


def job(*conditions: dict[str, Any], suspend: bool = False, active: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "support-v2-train"},
        "spec": {"suspend": suspend},
        "status": {"startTime": "2026-11-01T11:59:00Z", "active": active, "conditions": list(conditions)},
    }


def pod(
    phase: str = "Running",
    *,
    waiting: dict[str, Any] | None = None,
    terminated: dict[str, Any] | None = None,
    scheduled: dict[str, Any] | None = None,
    name: str = "support-v2-train-abcde",
    created: str = "2026-11-01T11:59:01Z",
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}} if phase == "Running" else {}
    if waiting:
        state = {"waiting": waiting}
    if terminated:
        state = {"terminated": terminated}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
    if scheduled:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", **scheduled}]
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def progress_line(step: int, total: int = 200, loss: float = 2.5) -> str:
    return json.dumps({"event": "progress", "step": step, "total_steps": total, "loss": loss,
                       "tokens_per_second": 1234.5, "eta_seconds": 60.0, "learning_rate": 1e-4})  # fmt: skip


def plan(
    observed: Observed, current: dict[str, Any] | None = None, at: datetime = T0
) -> tuple[dict[str, Any], list[Any]]:
    status, events = plan_status(current, 1, "support-v2-train", observed, at)
    LoraTrainingStatus.model_validate(status)
    return status, events


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_no_job_yet_is_pending() -> None:
    status, _ = plan(Observed(job=None))
    assert status["phase"] == "Pending" and status["jobName"] == "support-v2-train"
    assert conditions(status)["Running"]["reason"] == "JobPending"
    assert status["observedGeneration"] == 1


def test_unschedulable_pod_explains_why_with_an_event() -> None:
    unschedulable = pod(
        "Pending",
        scheduled={"reason": "Unschedulable", "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."},
    )
    status, events = plan(Observed(job=job(), pods=[unschedulable]))
    assert status["phase"] == "Pending"
    running = conditions(status)["Running"]
    assert running["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in running["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "Unschedulable")]
    _, again = plan(Observed(job=job(), pods=[unschedulable]), current=status)
    assert again == [], "an unchanged reason is not announced twice"


def test_image_pull_failure_is_named() -> None:
    pulling = pod("Pending", waiting={"reason": "ImagePullBackOff", "message": 'Back-off pulling image "trainer:nope"'})
    status, events = plan(Observed(job=job(), pods=[pulling]))
    assert conditions(status)["Running"]["reason"] == "ImagePullFailed" and "trainer:nope" in status["message"]
    assert events[0].reason == "ImagePullFailed"


def test_progress_comes_from_the_rank_zero_log_and_moves() -> None:
    first, _ = plan(Observed(job=job(), pods=[pod()], log_tail=progress_line(20) + "\n"))
    assert first["phase"] == "Running"
    assert first["progress"]["step"] == 20 and first["progress"]["percent"] == 10
    assert first["progress"]["loss"] == 2.5 and first["progress"]["totalSteps"] == 200
    later = T0 + timedelta(seconds=15)
    log = "noise that is not json\n" + progress_line(20) + "\n" + progress_line(90, loss=1.25) + "\n"
    second, _ = plan(Observed(job=job(), pods=[pod()], log_tail=log), current=first, at=later)
    assert second["progress"]["percent"] == 45 and second["progress"]["loss"] == 1.25
    assert second["progress"]["updatedAt"] != first["progress"]["updatedAt"]
    same, _ = plan(Observed(job=job(), pods=[pod()], log_tail=log), current=second, at=later + timedelta(seconds=15))
    assert same["progress"] == second["progress"], "no change, no new timestamp (no needless status writes)"


def test_success_takes_the_output_from_the_termination_message() -> None:
    result = {"event": "result", "exit_code": 0, "status": "succeeded", "output_uri": "s3://adapters/support/support-v2/",
              "digest": DIGEST, "steps": 200, "metrics": {"train_loss_first": 3.1, "train_loss_last": 0.9}}  # fmt: skip
    done = pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": json.dumps(result)})
    running, _ = plan(Observed(job=job(), pods=[pod()], log_tail=progress_line(150)))
    status, events = plan(
        Observed(job=job({"type": "Complete", "status": "True"}, active=0), pods=[done]), current=running
    )
    assert status["phase"] == "Succeeded"
    assert status["output"] == {"uri": result["output_uri"], "sha256": DIGEST, "metrics": result["metrics"]}
    assert status["progress"]["percent"] == 100 and status["progress"]["step"] == 200
    assert conditions(status)["Succeeded"]["status"] == "True" and "completionTime" in status
    assert ("Normal", "Completed") in [(e.type, e.reason) for e in events]


def test_success_without_a_result_is_not_silently_fine() -> None:
    status, events = plan(Observed(job=job({"type": "Complete", "status": "True"}), pods=[pod("Succeeded")]))
    assert conditions(status)["Succeeded"]["reason"] == "OutputMissing" and "output" not in status
    assert events[-1].type == "Warning"


@pytest.mark.parametrize(
    ("job_condition", "pods", "log", "reason", "words"),
    [
        ({"reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}, [], "",
         "DeadlineExceeded", "activeDeadlineSeconds"),
        ({"reason": "BackoffLimitExceeded"}, [pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})], "",
         "OOMKilled", "out of memory"),
        ({"reason": "PodFailurePolicy"}, [pod("Failed", terminated={"exitCode": 3, "message": CONFIG_ERROR})], "",
         "InvalidConfig", "TargetModuleNotFound: q_proj not in model"),
        ({"reason": "PodFailurePolicy"}, [pod("Failed", terminated={"exitCode": 4, "reason": "Error"})], "",
         "IntegrityFailed", "digest"),
        ({"reason": "BackoffLimitExceeded"}, [pod("Failed", terminated={"exitCode": 1, "reason": "Error"})],
         "step 10\nTraceback (most recent call last)\nRuntimeError: NCCL timeout\n", "BackoffLimitExceeded",
         "last exit code 1"),
    ],
    ids=["deadline", "oom", "invalid-config", "integrity", "backoff"],
)  # fmt: skip
def test_failure_reasons(
    job_condition: dict[str, Any], pods: list[dict[str, Any]], log: str, reason: str, words: str
) -> None:
    failed = job({"type": "Failed", "status": "True", **job_condition}, active=0)
    status, events = plan(Observed(job=failed, pods=pods, log_tail=log))
    assert status["phase"] == "Failed"
    condition = conditions(status)["Failed"]
    assert condition["reason"] == reason and words in condition["message"], condition["message"]
    assert ("Warning", reason) in [(e.type, e.reason) for e in events]


def test_backoff_failure_message_carries_the_log_tail() -> None:
    failed = job({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}, active=0)
    log = "a\nb\nRuntimeError: NCCL timeout\n"
    status, _ = plan(Observed(job=failed, pods=[pod("Failed", terminated={"exitCode": 1})], log_tail=log))
    assert "RuntimeError: NCCL timeout" in conditions(status)["Failed"]["message"]


def test_suspended_job_is_suspended() -> None:
    status, _ = plan(Observed(job=job(suspend=True, active=0), pods=[]))
    assert status["phase"] == "Suspended" and conditions(status)["Running"]["reason"] == "Suspended"


def test_retry_after_oom_is_visible_while_running() -> None:
    old = pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}, name="a", created="2026-11-01T11:59:01Z")
    new = pod("Running", name="b", created="2026-11-01T12:00:01Z")
    status, _ = plan(Observed(job=job(), pods=[old, new], log_tail=progress_line(40)))
    assert status["phase"] == "Running" and "OOMKilled" in status["message"]


def test_lineage_adapter_is_a_valid_loraadapter(examples: dict[str, Any]) -> None:
    spec = LoraTrainingSpec.model_validate(copy.deepcopy(examples["LoraTraining"]["spec"]))
    adapter = adapter_from_template("support-v2", "team-a", spec)
    validate(adapter)
    assert adapter["spec"]["source"] == {"trainingRef": {"name": "support-v2"}}
    assert adapter["metadata"]["labels"]["loraops.io/training"] == "support-v2"
    assert "ownerReferences" not in adapter["metadata"], "deleting a training must never delete a served adapter"
    assert adapter["spec"]["release"]["version"] == "2.0.0" and adapter["spec"]["tenants"] == ["acme"]
    assert adapter["spec"]["lora"] == {
        "rank": 16,
        "alpha": 32.0,
        "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "method": "qlora",
    }
