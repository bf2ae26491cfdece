"""The LoraTraining planner: which objects a training becomes. Pure; no API, no cluster."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraops.api.training import LoraTrainingSpec
from loraops.config import OperatorConfig
from loraops.kube.objects import Owner
from loraops.training.planner import TRAINING_LABEL, names_for, render, trainer_config

pytestmark = pytest.mark.training

OWNER = Owner("loraops.io/v1alpha1", "LoraTraining", "support-v2", "team-a", "6f1c2d3e-uid")
CONFIG = OperatorConfig(trainer_image="registry.example/loraops-trainer:1.0")


def spec_from(example: dict[str, Any], **resources: Any) -> LoraTrainingSpec:
    raw = copy.deepcopy(example["spec"])
    raw["resources"] = {**raw.get("resources", {}), **resources}
    return LoraTrainingSpec.model_validate(raw)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_one_gpu_is_a_plain_job_running_the_trainer(examples: dict[str, Any]) -> None:
    objects = by_kind(render(OWNER, spec_from(examples["LoraTraining"], gpusPerNode=1), CONFIG))
    assert set(objects) == {"ConfigMap", "Job"}
    job = objects["Job"]
    container = container_of(job)
    assert container["command"] == ["python", "-m", "loraops_trainer", "train", "--config", "/etc/loraops/trainer.yaml"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert container["image"] == "registry.example/loraops-trainer:1.0"


def test_four_gpus_run_four_worker_processes(examples: dict[str, Any]) -> None:
    container = container_of(by_kind(render(OWNER, spec_from(examples["LoraTraining"], gpusPerNode=4), CONFIG))["Job"])
    command = container["command"]
    assert command[:4] == ["python", "-m", "loraops_trainer", "train"]
    assert "--nproc-per-node=4" in command and not any(a.startswith("--nnodes") for a in command)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_rendered_launch_arguments_are_ones_the_trainer_accepts(examples: dict[str, Any]) -> None:
    from loraops_trainer.cli import build_parser

    command = container_of(
        by_kind(render(OWNER, spec_from(examples["LoraTraining"], nodes=3, gpusPerNode=2), CONFIG))["Job"]
    )["command"]
    args = build_parser().parse_args([a.replace("$(JOB_COMPLETION_INDEX)", "2") for a in command[3:]])
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.master_port) == (3, 2, 2, 29400)
    assert args.master_addr == f"{names_for('support-v2').job}-0.{names_for('support-v2').service}"


def test_two_nodes_are_an_indexed_job_with_rendezvous_at_pod_zero(examples: dict[str, Any]) -> None:
    objects = by_kind(render(OWNER, spec_from(examples["LoraTraining"], nodes=2, gpusPerNode=8), CONFIG))
    job, service = objects["Job"], objects["Service"]
    names = names_for("support-v2")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"] == names.service
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {TRAINING_LABEL: "support-v2"}
    command = container_of(job)["command"]
    assert "--nnodes=2" in command and "--nproc-per-node=8" in command
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command
    assert f"--master-addr={names.job}-0.{names.service}" in command and "--master-port=29400" in command
    env = {e["name"]: e for e in container_of(job)["env"]}
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    # One failed pod must not leave its rank doubled while a replacement starts.
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    assert job["spec"]["backoffLimit"] == 2 * examples["LoraTraining"]["spec"]["runPolicy"]["backoffLimit"]


def test_config_errors_fail_the_job_without_retries(examples: dict[str, Any]) -> None:
    job = by_kind(render(OWNER, spec_from(examples["LoraTraining"]), CONFIG))["Job"]
    (fail_job, ignore_disruption) = job["spec"]["podFailurePolicy"]["rules"]
    assert fail_job["action"] == "FailJob" and set(fail_job["onExitCodes"]["values"]) == {3, 4}
    assert ignore_disruption["action"] == "Ignore"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_qlora_is_passed_to_the_trainer_config(examples: dict[str, Any]) -> None:
    spec = spec_from(examples["LoraTraining"])
    assert spec.method == "qlora"
    objects = by_kind(render(OWNER, spec, CONFIG))
    config = yaml.safe_load(objects["ConfigMap"]["data"]["trainer.yaml"])
    assert config["method"] == "qlora" and config["loraPlusRatio"] == 16
    assert config["output"] == {"uri": "s3://adapters/support/support-v2/"}
    assert config["release"] == {"name": "support-v2", "version": "2.0.0", "promptVersion": "p7"}
    assert config == trainer_config(spec, "support-v2")


def test_the_trainer_accepts_the_rendered_config(examples: dict[str, Any]) -> None:
    from loraops_trainer.config import TrainConfig

    config = TrainConfig.model_validate(trainer_config(spec_from(examples["LoraTraining"]), "support-v2"))
    assert config.method == "qlora" and config.checkpoint.interval_steps == 200


def test_security_context_is_locked_down(examples: dict[str, Any]) -> None:
    job = by_kind(render(OWNER, spec_from(examples["LoraTraining"]), CONFIG))["Job"]
    pod = job["spec"]["template"]["spec"]
    security = container_of(job)["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in container_of(job)["volumeMounts"]}
    assert {"/tmp", "/dev/shm", "/home/trainer"} <= set(mounts), "writable scratch where the root is read-only"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}


def test_secrets_are_referenced_never_inlined(examples: dict[str, Any]) -> None:
    objects = render(OWNER, spec_from(examples["LoraTraining"]), CONFIG)
    text = json.dumps(objects)
    assert "credentialsSecretRef" not in text and "s3-reader" not in objects[0]["data"]["trainer.yaml"]
    env = container_of(by_kind(objects)["Job"])["env"]
    secret_env = [e for e in env if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in secret_env} == {"s3-writer"}
    assert all("value" not in e for e in secret_env)


def test_pvc_locations_are_mounted_where_the_trainer_looks(examples: dict[str, Any]) -> None:
    raw = copy.deepcopy(examples["LoraTraining"]["spec"])
    raw["output"] = {"uri": "pvc://adapters/support"}
    objects = by_kind(render(OWNER, LoraTrainingSpec.model_validate(raw), CONFIG))
    pod = objects["Job"]["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": True, "adapters": False}
    mounts = {m["mountPath"] for m in container_of(objects["Job"])["volumeMounts"]}
    assert {"/mnt/pvc/models", "/mnt/pvc/adapters"} <= mounts


def test_scheduling_fields_are_passed_through(examples: dict[str, Any]) -> None:
    raw = copy.deepcopy(examples["LoraTraining"]["spec"])
    raw["resources"]["priorityClassName"] = "training-low"
    raw["resources"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }
        }
    }
    raw["imagePullSecrets"] = [{"name": "registry"}]
    raw["suspend"] = True
    job = by_kind(render(OWNER, LoraTrainingSpec.model_validate(raw), CONFIG))["Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "training-low"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["affinity"] == raw["resources"]["affinity"]
    assert job["spec"]["suspend"] is True and job["spec"]["activeDeadlineSeconds"] == 86400
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400


def test_names_are_deterministic_and_fit_dns_labels() -> None:
    assert names_for("support-v2") == names_for("support-v2")
    assert names_for("support-v2").job == "support-v2-train"
    long = "a" * 63
    names = names_for(long)
    assert names == names_for(long) and len(names.job) <= 56 and len(names.config_map) <= 63
    assert names_for("a" * 62 + "b").job != names.job


def test_objects_are_owned_by_the_training(examples: dict[str, Any]) -> None:
    for obj in render(OWNER, spec_from(examples["LoraTraining"], nodes=2), CONFIG):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == OWNER.uid and ref["controller"] is True
        assert obj["metadata"]["labels"][TRAINING_LABEL] == "support-v2"


# ---- property: every valid spec renders objects the Kubernetes schema accepts ----

names_st = st.from_regex(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
uri_st = st.sampled_from(["s3://bucket/data.jsonl", "pvc://data/sets/a.jsonl", "file:///data/a.jsonl"])
spec_st = st.fixed_dictionaries(
    {
        "baseModel": st.fixed_dictionaries(
            {"name": st.just("org/base")},
            optional={"uri": st.sampled_from(["pvc://models/base", "s3://models/base", "hf://org/base"])},
        ),
        "dataset": st.fixed_dictionaries(
            {"uri": uri_st, "version": st.just("v1")}, optional={"credentialsSecretRef": st.just({"name": "reader"})}
        ),
        "method": st.sampled_from(["lora", "qlora", "dora", "rslora"]),
        "output": st.fixed_dictionaries(
            {"uri": st.sampled_from(["s3://out/x", "pvc://out/x", "file:///out"])},
            optional={"credentialsSecretRef": st.just({"name": "writer"})},
        ),
        "resources": st.fixed_dictionaries(
            {"nodes": st.integers(1, 8), "gpusPerNode": st.integers(0, 8)},
            optional={
                "cpu": st.sampled_from(["8", "500m"]),
                "memory": st.sampled_from(["64Gi", "512Mi"]),
                "nodeSelector": st.just({"gpu": "a100"}),
                "tolerations": st.just([{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]),
                "priorityClassName": st.just("batch"),
            },
        ),
        "runPolicy": st.fixed_dictionaries(
            {}, optional={"backoffLimit": st.integers(0, 10), "activeDeadlineSeconds": st.integers(60, 10**6)}
        ),
        "suspend": st.booleans(),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names_st, raw=spec_st)
def test_every_rendered_object_validates_against_kubernetes_1_30(name: str, raw: dict[str, Any]) -> None:
    owner = Owner("loraops.io/v1alpha1", "LoraTraining", name, "ns", "uid")
    for obj in render(owner, LoraTrainingSpec.model_validate(raw), CONFIG):
        kubernetes_validate.validate(obj, "1.30", strict=True)
        assert len(obj["metadata"]["name"]) <= 63
