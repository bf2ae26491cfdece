"""Fixtures of the adapter controller tests: a vLLM Deployment in the fake API, local replicas (a real agent
in front of a fake vLLM each), adapter folders, the operator configured to reach agents through the pods'
`loraops.io/agent-url` annotation."""

from __future__ import annotations

import copy
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.fakevllm import LocalReplicas, pod_from_template, vllm_deployment
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry
from loraops_trainer.manifest import build_manifest, hash_directory, write_manifest
from tests.conftest import NAMESPACE
from tests.support import patched_deployment, wait_for

BASE = "meta-llama/Llama-3.1-8B-Instruct"
DEPLOYMENT = "llama-8b"


def llama_deployment() -> dict[str, Any]:
    return vllm_deployment(
        DEPLOYMENT,
        ["--model", BASE, "--port", "8000"],
        image="vllm/vllm-openai:v0.32.0",
        replicas=3,
        resources={"limits": {"nvidia.com/gpu": 1}},
    )


def make_adapter(root: pathlib.Path, seed: int = 0) -> tuple[pathlib.Path, str]:
    """A PEFT-shaped folder with the loraops manifest; returns (folder, digest)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    )
    (root / "adapter_model.safetensors").write_bytes(bytes((seed + i) % 256 for i in range(2048)))
    write_manifest(root, build_manifest(root, kind="adapter", merge_state="unmerged"))
    digest, _ = hash_directory(root)
    return root, digest


def adapter_manifest(example: dict[str, Any], name: str, folder: pathlib.Path, digest: str) -> dict[str, Any]:
    body = copy.deepcopy(example)
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    body["spec"]["baseModel"] = BASE
    body["spec"]["source"] = {"uri": f"file://{folder}", "sha256": digest}
    body["spec"]["lora"] = {"rank": 8, "targetModules": ["q_proj", "v_proj"]}
    body["spec"].pop("evaluation", None)
    return body


class Cluster:
    """The test plays the Deployment/ReplicaSet controllers: pods come from the Deployment's current template."""

    def __init__(self, api: FakeKubeApi, replicas: LocalReplicas) -> None:
        self.api = api
        self.replicas = replicas
        self.serial = 0

    def deployment(self) -> dict[str, Any]:
        found = self.api.get("deployments", NAMESPACE, DEPLOYMENT)
        assert found is not None
        return found

    def wait_patched(self) -> dict[str, Any]:
        return wait_for(
            lambda: patched_deployment(self.api, NAMESPACE, DEPLOYMENT),
            message="the Deployment patched with the agent sidecar",
        )

    def add_pod(self) -> str:
        self.serial += 1
        name = f"{DEPLOYMENT}-7d9f-{self.serial:02d}"
        replica = self.replicas.add(name)
        self.api.create(
            "pods", pod_from_template(self.wait_patched(), name, replica.agent_url, f"10.0.0.{self.serial}"), NAMESPACE
        )
        return name

    def remove_pod(self, name: str) -> None:
        self.api.delete("pods", NAMESPACE, name)
        self.replicas.remove(name)

    def loaded(self, pod: str) -> set[str]:
        """The names the pod's vLLM serves (one per release: `<adapter>-<first 12 hex of its digest>`)."""
        fake = self.replicas.replicas[pod].vllm
        assert fake is not None
        return set(fake.adapters)

    def releases(self, pod: str) -> set[str]:
        """The adapters the pod's vLLM serves, read back from their served names (which must carry a digest)."""
        names = self.loaded(pod)
        assert all(re.fullmatch(r".+-[0-9a-f]{12}", n) for n in names), f"served names without a digest: {names}"
        return {n[:-13] for n in names}


@pytest.fixture
def adapter_config(operator_config: OperatorConfig) -> OperatorConfig:
    # No resync during a test: what happens must come from events (adapter changes, pod watch), as in a cluster
    # where the timer runs every few minutes.
    return operator_config.model_copy(update={"agent_url_annotation": True, "post_events": True, "resync_seconds": 300})


@pytest.fixture
def cluster(fake_api: FakeKubeApi, tmp_path: pathlib.Path) -> Iterator[Cluster]:
    fake_api.create("deployments", llama_deployment(), NAMESPACE)
    with LocalReplicas(tmp_path / "replicas", base_model=BASE) as replicas:
        yield Cluster(fake_api, replicas)


@pytest.fixture
def adapter_operator(fake_api: FakeKubeApi, adapter_config: OperatorConfig) -> Iterator[OperatorThread]:
    runner = OperatorThread(fake_api.url, registry=build_registry(adapter_config, login=False), namespaces=[NAMESPACE])
    with runner:
        yield runner
