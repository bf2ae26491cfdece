"""The LoraTraining controller with real kopf against the fake API. The fake API has no Job controller: the
tests play it, writing Job and pod status the way Kubernetes would."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest
import yaml

from loraops.config import FINALIZER, OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry
from tests.conftest import NAMESPACE, REPO
from tests.support import wait_for

pytestmark = pytest.mark.training

JOB = "support-v2-train"
DIGEST = "cd" * 32
UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
}
OOM_KILLED = {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}


def training_manifest() -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / "20-training.yaml").read_text())


def training(api: FakeKubeApi) -> dict[str, Any]:
    obj = api.get("loratrainings", NAMESPACE, "support-v2")
    assert obj is not None
    return obj


def status(api: FakeKubeApi) -> dict[str, Any]:
    return training(api).get("status") or {}


def condition(api: FakeKubeApi, type_: str) -> dict[str, Any] | None:
    return next((c for c in status(api).get("conditions", []) if c["type"] == type_), None)


def jobs(api: FakeKubeApi) -> list[dict[str, Any]]:
    return api.list("jobs", NAMESPACE)


def add_pod(api: FakeKubeApi, name: str, pod_status: dict[str, Any]) -> None:
    api.create(
        "pods",
        {
            "metadata": {"name": name, "labels": {"loraops.io/training": "support-v2", "job-name": JOB}},
            "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
            "status": pod_status,
        },
        NAMESPACE,
    )


def finish_job(api: FakeKubeApi, type_: str, reason: str | None = None) -> None:
    cond = {"type": type_, "status": "True", **({"reason": reason} if reason else {})}
    api.patch("jobs", NAMESPACE, JOB, {"status": {"active": 0, "conditions": [cond]}}, subresource="status")


def test_exactly_one_job_despite_faults_and_an_operator_restart(
    fake_api: FakeKubeApi, operator_config: OperatorConfig
) -> None:
    fake_api.inject_fault("POST", r"/jobs$", status=500, count=2)
    fake_api.inject_fault("POST", r"/jobs$", status=None, delay=1.5, count=1)  # slow create
    fake_api.inject_fault("PATCH", r"/loratrainings/support-v2/status", status=500, count=100)  # no status lands
    fake_api.create("loratrainings", training_manifest(), NAMESPACE)
    first = OperatorThread(fake_api.url, registry=build_registry(operator_config, login=False), namespaces=[NAMESPACE])
    with first:
        wait_for(lambda: jobs(fake_api), timeout=30, message="the Job")
    assert not status(fake_api), "the status write failed every time before the restart"
    fake_api.clear_faults()
    second = OperatorThread(fake_api.url, registry=build_registry(operator_config, login=False), namespaces=[NAMESPACE])
    with second:
        wait_for(lambda: status(fake_api).get("jobName") == JOB, timeout=30, message="status after restart")
        fake_api.inject_fault("POST", r"/jobs$", status=409, count=5)  # a stray retry finds it there
        fake_api.patch("loratrainings", NAMESPACE, "support-v2", {"metadata": {"labels": {"poke": "1"}}})
        wait_for(lambda: fake_api.get("loratrainings", NAMESPACE, "support-v2")["metadata"]["labels"], message="poke")
    assert [j["metadata"]["name"] for j in jobs(fake_api)] == [JOB]
    assert fake_api.request_count("POST", r"/jobs$") >= 3  # two faults and the slow one all went to the API
    assert len(fake_api.list("configmaps", NAMESPACE)) == 1


def test_succeeded_job_fills_output_and_creates_the_lineage_adapter(fake_api: FakeKubeApi, operator: Any) -> None:
    fake_api.create("loratrainings", training_manifest(), NAMESPACE)
    wait_for(lambda: jobs(fake_api), message="the Job")
    add_pod(
        fake_api,
        f"{JOB}-x1",
        {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]},
    )
    fake_api.set_pod_log(
        NAMESPACE, f"{JOB}-x1", json.dumps({"event": "progress", "step": 30, "total_steps": 100, "loss": 1.5}) + "\n"
    )
    wait_for(lambda: status(fake_api).get("phase") == "Running", message="Running")
    result = {
        "event": "result",
        "status": "succeeded",
        "output_uri": "s3://adapters/support/support-v2/",
        "digest": DIGEST,
        "steps": 100,
        "metrics": {"train_loss_last": 0.7},
    }
    terminated = {"exitCode": 0, "reason": "Completed", "message": json.dumps(result)}
    pod_status = {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}
    fake_api.patch("pods", NAMESPACE, f"{JOB}-x1", {"status": pod_status}, subresource="status")
    finish_job(fake_api, "Complete")
    wait_for(lambda: status(fake_api).get("phase") == "Succeeded", message="Succeeded")
    out = wait_for(lambda: status(fake_api).get("adapterRef") and status(fake_api), message="adapterRef")
    assert out["output"]["sha256"] == DIGEST and out["output"]["uri"] == result["output_uri"]
    assert out["progress"]["percent"] == 100
    adapter = fake_api.get("loraadapters", NAMESPACE, "support-v2")
    assert adapter is not None and adapter["spec"]["source"] == {"trainingRef": {"name": "support-v2"}}
    assert adapter["metadata"]["labels"]["loraops.io/training"] == "support-v2"
    assert not adapter["metadata"].get("ownerReferences")


@pytest.mark.parametrize(
    ("pod_status", "job_reason", "reason", "words"),
    [
        ({"phase": "Pending", "conditions": [UNSCHEDULABLE]}, None, "Unschedulable", "Insufficient nvidia.com/gpu"),
        ({"phase": "Failed", "containerStatuses": [OOM_KILLED]}, "BackoffLimitExceeded", "OOMKilled", "out of memory"),
    ],
    ids=["unschedulable", "oomkilled"],
)  # fmt: skip
def test_pod_trouble_is_explained(
    fake_api: FakeKubeApi, operator: Any, pod_status: dict[str, Any], job_reason: str | None, reason: str, words: str
) -> None:
    fake_api.create("loratrainings", training_manifest(), NAMESPACE)
    wait_for(lambda: jobs(fake_api), message="the Job")
    add_pod(fake_api, f"{JOB}-p1", pod_status)
    if job_reason:
        finish_job(fake_api, "Failed", job_reason)
    type_ = "Failed" if job_reason else "Running"
    found = wait_for(lambda: (c := condition(fake_api, type_)) and c["reason"] == reason and c, message=reason)
    assert words in found["message"]
    events = fake_api.list("events", NAMESPACE)
    assert any(e.get("reason") == reason and e.get("type") == "Warning" for e in events), "an Event explains it"


def test_suspend_suspends_the_job(fake_api: FakeKubeApi, operator: Any, kubectl: Any) -> None:
    fake_api.create("loratrainings", training_manifest(), NAMESPACE)
    wait_for(lambda: jobs(fake_api), message="the Job")
    kubectl("patch", "lt", "support-v2", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    wait_for(lambda: fake_api.get("jobs", NAMESPACE, JOB)["spec"]["suspend"] is True, message="Job suspended")
    wait_for(lambda: status(fake_api).get("phase") == "Suspended", message="phase Suspended")


def test_delete_removes_the_job_and_releases_the_training(fake_api: FakeKubeApi, operator: Any) -> None:
    fake_api.create("loratrainings", training_manifest(), NAMESPACE)
    wait_for(lambda: jobs(fake_api), message="the Job")
    wait_for(lambda: FINALIZER in training(fake_api)["metadata"].get("finalizers", []), message="finalizer")
    add_pod(fake_api, f"{JOB}-d1", {"phase": "Running"})
    fake_api.delete("loratrainings", NAMESPACE, "support-v2")
    wait_for(lambda: fake_api.get("loratrainings", NAMESPACE, "support-v2") is None, message="training gone")
    assert fake_api.get("jobs", NAMESPACE, JOB) is None and fake_api.get("pods", NAMESPACE, f"{JOB}-d1") is None


def test_a_foreign_object_with_the_job_name_is_not_adopted(fake_api: FakeKubeApi, operator: Any) -> None:
    foreign = copy.deepcopy({"metadata": {"name": JOB}, "spec": {"template": {"spec": {"containers": []}}}})
    fake_api.create("jobs", foreign, NAMESPACE)
    fake_api.create("loratrainings", training_manifest(), NAMESPACE)
    events = wait_for(
        lambda: [e for e in fake_api.list("events", NAMESPACE) if e.get("reason") == "NameConflict"], message="conflict"
    )
    assert JOB in events[0]["message"]
    assert len(jobs(fake_api)) == 1 and not fake_api.get("jobs", NAMESPACE, JOB)["metadata"].get("ownerReferences")


def test_rendered_config_map_is_what_the_trainer_reads(
    fake_api: FakeKubeApi, operator: Any, tmp_path: pathlib.Path
) -> None:
    from loraops_trainer.config import load_train_config

    fake_api.create("loratrainings", training_manifest(), NAMESPACE)
    config_map = wait_for(lambda: fake_api.get("configmaps", NAMESPACE, "support-v2-config"), message="ConfigMap")
    (tmp_path / "trainer.yaml").write_text(config_map["data"]["trainer.yaml"])
    config = load_train_config(tmp_path / "trainer.yaml")
    assert config.method == "qlora" and config.output.uri == "s3://adapters/support/support-v2/"
