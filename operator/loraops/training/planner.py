"""LoraTraining planner, part one: the objects a training needs (pure; spec + config → manifests).

- a ConfigMap with the trainer's config (the spec, rendered for the pod's file system),
- one Job (one pod; N worker processes under torch's elastic launcher when N > 1 GPUs), or, for several
  nodes, an Indexed Job with completions = parallelism = nodes and a headless Service so the pods find
  pod 0 (the rendezvous host) by its stable DNS name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from loraops.api.common import SecretReference
from loraops.api.training import LoraTrainingSpec
from loraops.config import OperatorConfig
from loraops.kube.objects import MANAGED_BY, Owner, bounded_name, restricted_security_context

TRAINING_LABEL = "loraops.io/training"
CONFIG_DIR = "/etc/loraops"
CONFIG_FILE = "trainer.yaml"
PVC_ROOT = "/mnt/pvc"
RENDEZVOUS_PORT = 29400
CONTAINER = "trainer"
EXIT_CONFIG = 3
"""`loraops_trainer` exits 3 on bad input and 4 on a digest mismatch: retrying cannot fix either."""
EXIT_INTEGRITY = 4
TRAINER_UID = 1000
SIGNING_DIR = "/var/run/loraops/signing"
SIGNING_KEY_FILE = "private.pem"
SIGNING_CERT_FILE = "certificate.pem"
SIGNING_CHAIN_FILE = "chain.pem"
SECRET_MODE = 0o400
"""Owner-read only; with the pod's fsGroup the kubelet adds group read, so the trainer's group (and no one
else) can read the key."""
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")


@dataclass(frozen=True)
class TrainingNames:
    job: str
    config_map: str
    service: str


def names_for(training: str) -> TrainingNames:
    # Pod hostnames of an Indexed Job are `<job>-<index>` and must stay within 63 characters.
    job = bounded_name(training, "train", limit=56)
    return TrainingNames(job=job, config_map=bounded_name(training, "config"), service=job)


def output_uri(spec: LoraTrainingSpec, training: str) -> str:
    return f"{spec.output.uri.rstrip('/')}/{training}/"


def trainer_config(spec: LoraTrainingSpec, training: str) -> dict[str, Any]:
    """The trainer's config file: the spec's training fields (camelCase, as the trainer reads them),
    credentials references left out (they arrive as environment variables), the output under the name."""
    config = spec.model_dump(
        by_alias=True,
        exclude_none=True,
        mode="json",
        include={"base_model", "dataset", "method", "lora_plus_ratio", "lora", "hyperparameters"},
        exclude={"dataset": {"credentials_secret_ref"}},
    )
    config["checkpoint"] = {"intervalSteps": spec.checkpoint_interval_steps}
    config["output"] = {"uri": output_uri(spec, training)}
    if spec.signing is not None:
        config["signing"] = signing_config(spec)
    template = spec.adapter_template
    config["release"] = {
        "name": (template.name if template and template.name else training),
        **({"version": template.release_version} if template and template.release_version else {}),
        **({"promptVersion": template.prompt_version} if template and template.prompt_version else {}),
    }
    return config


def signing_config(spec: LoraTrainingSpec) -> dict[str, Any]:
    """The trainer's `signing` section: where the mounted key and certificate are, never their content."""
    signing = spec.signing
    assert signing is not None
    if signing.sigstore is not None:
        return {"sigstore": True}
    section: dict[str, Any] = {"keyPath": f"{SIGNING_DIR}/key/{SIGNING_KEY_FILE}"}
    if signing.certificate_secret_ref is not None:
        section["certificatePath"] = f"{SIGNING_DIR}/certificate/{SIGNING_CERT_FILE}"
        if signing.certificate_secret_ref.chain_key:
            section["certificateChainPaths"] = [f"{SIGNING_DIR}/certificate/{SIGNING_CHAIN_FILE}"]
    return section


def _signing_volumes(spec: LoraTrainingSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) for the signing key and certificate: each Secret key projected under a fixed file
    name (only the keys named, not the whole Secret), read-only, mode 0400."""
    signing = spec.signing
    if signing is None or signing.key_secret_ref is None:
        return [], []
    key = signing.key_secret_ref
    volumes: list[dict[str, Any]] = [
        {
            "name": "signing-key",
            "secret": {
                "secretName": key.name,
                "items": [{"key": key.key, "path": SIGNING_KEY_FILE}],
                "defaultMode": SECRET_MODE,
            },
        }
    ]
    mounts: list[dict[str, Any]] = [{"name": "signing-key", "mountPath": f"{SIGNING_DIR}/key", "readOnly": True}]
    certificate = signing.certificate_secret_ref
    if certificate is not None:
        items = [{"key": certificate.key, "path": SIGNING_CERT_FILE}]
        if certificate.chain_key:
            items.append({"key": certificate.chain_key, "path": SIGNING_CHAIN_FILE})
        volumes.append(
            {
                "name": "signing-certificate",
                "secret": {"secretName": certificate.name, "items": items, "defaultMode": SECRET_MODE},
            }
        )
        mounts.append({"name": "signing-certificate", "mountPath": f"{SIGNING_DIR}/certificate", "readOnly": True})
    return volumes, mounts


def _claims(spec: LoraTrainingSpec) -> dict[str, bool]:
    """PVC claims the pod mounts → read-only? (output claims are writable)."""
    claims: dict[str, bool] = {}
    for uri, read_only in ((spec.base_model.uri, True), (spec.dataset.uri, True), (spec.output.uri, False)):
        if uri and uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            claims[claim] = claims.get(claim, True) and read_only
    return claims


def _secret_env(refs: list[SecretReference]) -> list[dict[str, Any]]:
    """S3 credentials as environment variables from Secrets: the values never appear in the Job spec.
    The output's Secret wins over the dataset's for the same variable (it must be able to write)."""
    env: dict[str, dict[str, Any]] = {}
    for ref in refs:
        for key in S3_SECRET_KEYS:
            env[key] = {"name": key, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key, "optional": True}}}
    return list(env.values())


def trainer_command(spec: LoraTrainingSpec, names: TrainingNames) -> list[str]:
    """The trainer's own launcher, not the `torchrun` CLI: both run torch's elastic agent, but torchrun turns
    every worker failure into exit code 1, and the Job's podFailurePolicy needs the trainer's codes to tell a
    config error (no retry) from a crash (retry, resume from the checkpoint)."""
    command = ["python", "-m", "loraops_trainer", "train", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    nodes, gpus = spec.resources.nodes, spec.resources.gpus_per_node
    if gpus > 1 or nodes > 1:
        command.append(f"--nproc-per-node={max(gpus, 1)}")
    if nodes > 1:
        command += [
            f"--nnodes={nodes}",
            "--node-rank=$(JOB_COMPLETION_INDEX)",
            f"--master-addr={names.job}-0.{names.service}",
            f"--master-port={RENDEZVOUS_PORT}",
        ]
    return command


def _resources(spec: LoraTrainingSpec) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if spec.resources.gpus_per_node:
        limits["nvidia.com/gpu"] = spec.resources.gpus_per_node
    if spec.resources.cpu:
        limits["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        limits["memory"] = spec.resources.memory
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def render(owner: Owner, spec: LoraTrainingSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """Every object the training needs, in creation order (ConfigMap, Service, Job)."""
    names = names_for(owner.name)
    labels = {TRAINING_LABEL: owner.name, "app.kubernetes.io/component": "trainer", **MANAGED_BY}
    metadata = {"namespace": owner.namespace, "labels": labels, "ownerReferences": [owner.reference()]}
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": names.config_map, **metadata},
            "data": {CONFIG_FILE: yaml.safe_dump(trainer_config(spec, owner.name), sort_keys=True)},
        }
    ]
    multi_node = spec.resources.nodes > 1
    if multi_node:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": names.service, **metadata},
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,  # rendezvous happens before any pod is Ready
                    "selector": {TRAINING_LABEL: owner.name},
                    "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
                },
            }
        )
    objects.append(_job(owner, spec, config, names, labels, metadata, multi_node))
    return objects


def _job(
    owner: Owner,
    spec: LoraTrainingSpec,
    config: OperatorConfig,
    names: TrainingNames,
    labels: dict[str, str],
    metadata: dict[str, Any],
    multi_node: bool,
) -> dict[str, Any]:
    refs = [r for r in (spec.dataset.credentials_secret_ref, spec.output.credentials_secret_ref) if r]
    env: list[dict[str, Any]] = [
        {"name": "LORAOPS_PVC_ROOT", "value": PVC_ROOT},
        {"name": "HOME", "value": "/home/trainer"},
        {"name": "HF_HOME", "value": "/home/trainer/.cache/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *_secret_env(refs),
    ]
    if multi_node:
        env.append(
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            }
        )
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": "home", "mountPath": "/home/trainer"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": names.config_map}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
    ]
    signing_volumes, signing_mounts = _signing_volumes(spec)
    volumes += signing_volumes
    mounts += signing_mounts
    for index, (claim, read_only) in enumerate(sorted(_claims(spec).items())):
        volumes.append({"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": f"pvc-{index}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": read_only})

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": trainer_command(spec, names),
        "env": env,
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_security_context(TRAINER_UID),
    }
    if multi_node:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    if resources := _resources(spec):
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the trainer needs no API access
        "securityContext": {"runAsNonRoot": True, "fsGroup": TRAINER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if multi_node:
        pod_spec["subdomain"] = names.service
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = list(spec.resources.tolerations)
    if spec.resources.affinity:
        pod_spec["affinity"] = dict(spec.resources.affinity)
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]

    policy = spec.run_policy
    job_spec: dict[str, Any] = {
        # Each retry of a multi-node attempt loses one pod; count the budget per node.
        "backoffLimit": policy.backoff_limit * spec.resources.nodes,
        "suspend": spec.suspend,
        # A replacement pod starts only once the failed one is gone, so two pods never hold one rank.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [EXIT_CONFIG, EXIT_INTEGRITY],
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if multi_node:
        job_spec.update(completionMode="Indexed", completions=spec.resources.nodes, parallelism=spec.resources.nodes)
    if policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": names.job, **metadata}, "spec": job_spec}
