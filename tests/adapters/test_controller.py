"""The LoraAdapter controller with real kopf against the fake API and three real agents, each in front of its
own fake vLLM. The tests play the Deployment controller: pods are created from the patched template."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from loraops.adapters.placement import served_name
from loraops.devmode.apiserver import FakeKubeApi
from tests.conftest import NAMESPACE
from tests.support import wait_for

from .conftest import DEPLOYMENT, Cluster, adapter_manifest, make_adapter

pytestmark = pytest.mark.adapters


def status(api: FakeKubeApi, name: str) -> dict[str, Any]:
    obj = api.get("loraadapters", NAMESPACE, name)
    return (obj or {}).get("status") or {}


def condition(api: FakeKubeApi, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in status(api, name).get("conditions", []) if c["type"] == type_), {})


def ready(api: FakeKubeApi, name: str, replicas: str) -> dict[str, Any] | None:
    current = status(api, name)
    return current if current.get("phase") == "Ready" and current.get("readyReplicas") == replicas else None


def deployment_patches(api: FakeKubeApi) -> int:
    return api.request_count("PATCH", rf"/deployments/{DEPLOYMENT}$")


@pytest.fixture
def applied(
    fake_api: FakeKubeApi, cluster: Cluster, adapter_operator: Any, examples: dict[str, Any], tmp_path: pathlib.Path
) -> tuple[str, str]:
    folder, digest = make_adapter(tmp_path / "artifacts" / "support-v1")
    fake_api.create("loraadapters", adapter_manifest(examples["LoraAdapter"], "support-v1", folder, digest), NAMESPACE)
    for _ in range(3):
        cluster.add_pod()
    return "support-v1", digest


def test_apply_is_ready_on_three_replicas_with_placements(
    fake_api: FakeKubeApi, cluster: Cluster, applied: tuple[str, str]
) -> None:
    name, digest = applied
    current = wait_for(lambda: ready(fake_api, name, "3/3"), timeout=30, message="Ready 3/3")
    pods = sorted(cluster.replicas.replicas)
    assert [p["pod"] for p in current["placements"]] == pods
    assert all(p["state"] == "Loaded" and p["digest"] == digest and p["loadedAt"] for p in current["placements"])
    assert current["servedName"] == served_name(name, digest) == f"{name}-{digest[:12]}"
    assert current["artifact"]["digest"] == digest
    assert current["artifact"]["files"] == 3 and current["artifact"]["sizeBytes"] > 2048
    assert all(cluster.loaded(pod) == {served_name(name, digest)} for pod in pods)
    for type_ in ("Verified", "Loaded", "Effective", "Ready"):
        assert condition(fake_api, name, type_)["status"] == "True", type_
    # The fake vLLM's base model has no files the agents could read: the modules were not checked, which is
    # shown but does not block Ready (the effect probe proved the adapter changes the answers).
    compatible = condition(fake_api, name, "Compatible")
    assert (compatible["status"], compatible["reason"]) == ("Unknown", "UnknownArchitecture"), compatible
    assert all(p["effective"] is True and p["probeLatencySeconds"] >= 0 for p in current["placements"])
    assert current["release"]["version"] == "1.0.0"
    deployment = cluster.deployment()
    vllm = deployment["spec"]["template"]["spec"]["containers"][0]
    assert (
        "--enable-lora" in vllm["args"] and {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    )
    assert vllm["resources"] == {"limits": {"nvidia.com/gpu": 1}}, "user fields untouched"
    events = [e for e in fake_api.list("events", NAMESPACE) if e.get("reason") == "DeploymentPatched"]
    assert events and "agent sidecar" in events[0]["message"]


def test_no_op_reconciles_do_not_touch_the_deployment(
    fake_api: FakeKubeApi, cluster: Cluster, applied: tuple[str, str]
) -> None:
    name, _ = applied
    wait_for(lambda: ready(fake_api, name, "3/3"), timeout=30, message="Ready 3/3")
    patches = deployment_patches(fake_api)
    version = cluster.deployment()["metadata"]["resourceVersion"]
    loads = sum(len(r.vllm.loads()) for r in cluster.replicas.replicas.values() if r.vllm)
    reconciles = fake_api.request_count("GET", rf"/loraadapters/{name}$")
    # Three more reconciles (label pokes, as a GitOps tool re-applying would cause) must change nothing.
    for poke in ("1", "2", "3"):
        fake_api.patch("loraadapters", NAMESPACE, name, {"metadata": {"labels": {"poke": poke}}})
        wait_for(
            lambda n=int(poke): fake_api.request_count("GET", rf"/loraadapters/{name}$") >= reconciles + n,
            message=f"reconcile {poke}",
        )
    assert deployment_patches(fake_api) == patches == 1
    assert cluster.deployment()["metadata"]["resourceVersion"] == version
    assert sum(len(r.vllm.loads()) for r in cluster.replicas.replicas.values() if r.vllm) == loads == 3


def test_a_replaced_pod_gets_the_adapters_again(
    fake_api: FakeKubeApi, cluster: Cluster, applied: tuple[str, str], examples: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    name, first = applied
    folder, digest = make_adapter(tmp_path / "artifacts" / "support-v2", seed=7)
    fake_api.create("loraadapters", adapter_manifest(examples["LoraAdapter"], "support-v2", folder, digest), NAMESPACE)
    wait_for(lambda: ready(fake_api, name, "3/3") and ready(fake_api, "support-v2", "3/3"), timeout=30, message="both")
    victim = sorted(cluster.replicas.replicas)[1]
    cluster.remove_pod(victim)
    replacement = cluster.add_pod()

    def moved() -> bool:
        return all(
            (s := status(fake_api, n)).get("readyReplicas") == "3/3"
            and replacement in {p["pod"] for p in s.get("placements", []) if p["state"] == "Loaded"}
            and victim not in {p["pod"] for p in s.get("placements", [])}
            for n in (name, "support-v2")
        )

    wait_for(moved, timeout=30, message="the replacement pod holds both adapters")
    assert cluster.loaded(replacement) == {served_name(name, first), served_name("support-v2", digest)}


def test_deletion_waits_while_routed_then_unloads_everywhere(
    fake_api: FakeKubeApi, cluster: Cluster, applied: tuple[str, str]
) -> None:
    name, _ = applied
    wait_for(lambda: ready(fake_api, name, "3/3"), timeout=30, message="Ready 3/3")
    route = {
        "apiVersion": "loraops.io/v1alpha1",
        "kind": "AdapterRoute",
        "metadata": {"name": "support-bot"},
        "spec": {
            "model": "support-bot",
            "base": {"deployment": DEPLOYMENT, "service": DEPLOYMENT, "servedModel": "base"},
            "adapter": name,
        },
    }
    fake_api.create("adapterroutes", route, NAMESPACE)
    fake_api.delete("loraadapters", NAMESPACE, name)
    blocked = wait_for(
        lambda: (c := condition(fake_api, name, "DeletionBlocked")).get("status") == "True" and c,
        timeout=20,
        message="DeletionBlocked",
    )
    assert "support-bot" in blocked["message"] and status(fake_api, name)["phase"] == "Deleting"
    events = [e for e in fake_api.list("events", NAMESPACE) if e.get("reason") == "DeletionBlocked"]
    assert events and "support-bot" in events[0]["message"] and events[0]["type"] == "Warning"
    assert all(cluster.releases(pod) == {name} for pod in cluster.replicas.replicas), "still serving while routed"
    fake_api.patch("adapterroutes", NAMESPACE, "support-bot", {"spec": {"adapter": None}})
    wait_for(lambda: fake_api.get("loraadapters", NAMESPACE, name) is None, timeout=20, message="adapter released")
    assert all(cluster.loaded(pod) == set() for pod in cluster.replicas.replicas), "unloaded from every pod"


def test_training_ref_adapter_waits_for_its_training_then_loads_its_output(
    fake_api: FakeKubeApi, cluster: Cluster, adapter_operator: Any, repo: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """An adapter released from a training (the same object the training's adapterTemplate would create) waits
    while the training runs, then takes uri and digest from the training's status and loads on every replica.
    The test plays the training's Job controller."""
    import json

    import yaml

    from loraops.api.training import LoraTrainingSpec
    from loraops.training.lineage import adapter_from_template

    training = yaml.safe_load((repo / "examples" / "20-training.yaml").read_text())
    fake_api.create("loratrainings", training, NAMESPACE)
    lineage = adapter_from_template("support-v2", NAMESPACE, LoraTrainingSpec.model_validate(training["spec"]))
    fake_api.create("loraadapters", lineage, NAMESPACE)
    for _ in range(3):
        cluster.add_pod()
    job = wait_for(lambda: fake_api.list("jobs", NAMESPACE), message="the training Job")[0]["metadata"]["name"]
    pending = wait_for(
        lambda: (
            condition(fake_api, "support-v2", "Verified").get("reason") == "TrainingPending"
            and status(fake_api, "support-v2")
        ),
        timeout=30,
        message="the adapter waiting for its training",
    )
    assert pending["phase"] == "Pending" and not pending.get("placements")
    assert all(cluster.loaded(pod) == set() for pod in cluster.replicas.replicas)
    folder, digest = make_adapter(tmp_path / "trained" / "support-v2", seed=11)
    result = {"event": "result", "status": "succeeded", "output_uri": f"file://{folder}", "digest": digest, "steps": 9}
    terminated = {"exitCode": 0, "reason": "Completed", "message": json.dumps(result)}
    pod = {
        "metadata": {"name": f"{job}-p", "labels": {"loraops.io/training": "support-v2", "job-name": job}},
        "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        },
    }
    fake_api.create("pods", pod, NAMESPACE)
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    fake_api.patch("jobs", NAMESPACE, job, complete, subresource="status")
    try:
        current = wait_for(lambda: ready(fake_api, "support-v2", "3/3"), timeout=30, message="Ready from the output")
    except AssertionError as error:
        trained = (fake_api.get("loratrainings", NAMESPACE, "support-v2") or {}).get("status")
        raise AssertionError(f"{error}; adapter {status(fake_api, 'support-v2')}; training {trained}") from None
    assert (current["artifact"]["uri"], current["artifact"]["digest"]) == (f"file://{folder}", digest)
    assert current["release"]["trainedBy"] == "support-v2" and current["release"]["version"] == "2.0.0"
    assert all(cluster.loaded(pod) == {served_name("support-v2", digest)} for pod in cluster.replicas.replicas)
