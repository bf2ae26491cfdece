"""e2e: `kubectl apply` a LoraAdapter whose artifact is on an S3 server (moto) → the real operator patches the
vLLM Deployment, tells the real agent in front of the real vLLM CPU server to load it → Ready → a completion
by the adapter's name succeeds; the evaluation gate runs for real (the trainer's evaluate through the local
Job runner) on a tiny golden set."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import boto3
import pytest
import yaml

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.fakevllm import LocalReplicas, pod_from_template, vllm_deployment
from loraops.devmode.jobrunner import LocalJobRunner
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry
from loraops_trainer.manifest import build_manifest, write_manifest
from tests.conftest import NAMESPACE
from tests.e2e.adapters import make_adapter
from tests.support import Kubectl, patched_deployment, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.adapters]

KEYS = {"AWS_ACCESS_KEY_ID": "e2e-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret", "AWS_REGION": "us-east-1"}
GOLDEN = [
    {"prompt": "what is the capital of france?", "expected": "zzz unreachable answer", "slice": "geo"},
    {"prompt": "what is the capital of spain?", "expected": "zzz unreachable answer", "slice": "geo"},
    {"prompt": "say hello", "expected": "zzz unreachable answer", "slice": "chat"},
]


@pytest.fixture(scope="module")
def s3(moto_s3_endpoint: str) -> str:
    return moto_s3_endpoint


def upload_adapter(endpoint: str, folder: pathlib.Path) -> str:
    secrets = {"aws_access_key_id": KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": KEYS["AWS_SECRET_ACCESS_KEY"]}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **secrets)
    client.create_bucket(Bucket="adapters")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket="adapters", Key=f"support/tiny-v1/{path.relative_to(folder)}", Body=path.read_bytes())
    return "s3://adapters/support/tiny-v1/"


def deployment(model: pathlib.Path, port: int) -> dict[str, Any]:
    args = ["--model", str(model), "--served-model-name", "tiny-llama", "--port", str(port), "--max-lora-rank", "8"]
    return vllm_deployment("tiny", args, image="vllm-cpu")


def adapter_yaml(uri: str, digest: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "loraops.io/v1alpha1",
            "kind": "LoraAdapter",
            "metadata": {"name": "support-tiny-v1", "namespace": NAMESPACE},
            "spec": {
                "baseModel": "tiny-llama",
                "source": {"uri": uri, "sha256": digest, "credentialsSecretRef": {"name": "s3-reader"}},
                "lora": {"rank": 16, "targetModules": ["q_proj", "v_proj", "o_proj"]},
                "release": {"version": "1.0.0", "datasetVersion": "2026-11"},
                "provenance": {"owner": "support-ml", "license": "apache-2.0"},
                "serving": {"deployment": "tiny"},
                "evaluation": {"golden": {"configMapRef": {"name": "golden"}}, "metrics": ["exact_match"],
                               "maxTokens": 8},
            },
        }
    )  # fmt: skip


def ready(api: FakeKubeApi) -> dict[str, Any] | None:
    status = (api.get("loraadapters", NAMESPACE, "support-tiny-v1") or {}).get("status") or {}
    if status.get("phase") == "Failed":  # fail fast, with everything the operator said
        raise AssertionError(json.dumps(status, indent=1))
    return status if status.get("phase") == "Ready" else None


def test_s3_adapter_is_ready_answers_by_name_and_passes_the_gate(
    vllm_server: Any,
    tiny_model: pathlib.Path,
    s3: str,
    fake_api: FakeKubeApi,
    kubectl: Kubectl,
    operator_config: OperatorConfig,
    tmp_path: pathlib.Path,
) -> None:
    folder = make_adapter(tiny_model, tmp_path / "tiny-v1", seed=3, rank=8)
    manifest = build_manifest(folder, kind="adapter", merge_state="unmerged")
    write_manifest(folder, manifest)
    uri = upload_adapter(s3, folder)
    # The Secret, and its mount in the agent as the kubelet would project it (the agent reads files).
    credentials = tmp_path / "credentials"
    (credentials / "s3-reader").mkdir(parents=True)
    for key, value in {**KEYS, "AWS_ENDPOINT_URL": s3}.items():
        (credentials / "s3-reader" / key).write_text(value)
    fake_api.create("secrets", {"metadata": {"name": "s3-reader"}, "stringData": KEYS}, NAMESPACE)
    golden_text = "".join(json.dumps(row) + "\n" for row in GOLDEN)
    fake_api.create("configmaps", {"metadata": {"name": "golden"}, "data": {"golden.jsonl": golden_text}}, NAMESPACE)
    fake_api.create("deployments", deployment(tiny_model, vllm_server.port), NAMESPACE)
    service = {
        "metadata": {"name": "tiny", "annotations": {"loraops.io/url": vllm_server.url}},
        "spec": {"selector": {"app": "tiny"}, "ports": [{"name": "http", "port": 8000}]},
    }
    fake_api.create("services", service, NAMESPACE)
    config = operator_config.model_copy(update={"agent_url_annotation": True})
    operator = OperatorThread(fake_api.url, registry=build_registry(config, login=False), namespaces=[NAMESPACE])
    with (
        LocalReplicas(tmp_path / "replicas", credentials_dir=credentials, watch_interval=0.5) as replicas,
        LocalJobRunner(fake_api, tmp_path / "jobs", [NAMESPACE]),
        operator,
    ):
        kubectl("apply", "--validate=false", "-f", "-", input=adapter_yaml(uri, str(manifest["digest"])))

        current = wait_for(
            lambda: patched_deployment(fake_api, NAMESPACE, "tiny"), timeout=30, message="the Deployment patched"
        )
        args = current["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--max-lora-rank") + 1] == "16", "raised for the rank-16 claim"
        replica = replicas.add("tiny-0", vllm_url=vllm_server.url)
        fake_api.create("pods", pod_from_template(current, "tiny-0", replica.agent_url, "10.0.0.1"), NAMESPACE)
        try:
            status = wait_for(lambda: ready(fake_api), timeout=180, message="Ready (loaded, then evaluated)")
            assert status["readyReplicas"] == "1/1" and status["placements"][0]["state"] == "Loaded"
            assert status["artifact"]["digest"] == manifest["digest"] and status["artifact"]["uri"] == uri
            served = f"support-tiny-v1-{str(manifest['digest'])[:12]}"  # one served name per release
            assert status["servedName"] == served and status["placements"][0]["servedName"] == served
            answer = vllm_server.complete(served, "what is the capital of france?", max_tokens=4)
            assert answer["model"] == served and answer["choices"][0]["text"]
            effective = next(c for c in status["conditions"] if c["type"] == "Effective")
            assert effective["status"] == "True" and status["placements"][0]["probeLatencySeconds"] > 0
            evaluation = status["evaluation"]
            assert evaluation["samples"] == len(GOLDEN) and evaluation["passed"] is True
            assert evaluation["goldenDigest"] == hashlib.sha256(golden_text.encode()).hexdigest()
            assert evaluation["digest"] == manifest["digest"] and {s["name"] for s in evaluation["slices"]} == {
                "geo",
                "chat",
            }
            gate = next(c for c in status["conditions"] if c["type"] == "Evaluated")
            assert gate["status"] == "True" and gate["reason"] == "Passed"
            assert fake_api.get("jobs", NAMESPACE, evaluation["jobName"]) is not None
            printed = kubectl("get", "la", "support-tiny-v1").stdout
            assert "Ready" in printed and "1/1" in printed
        finally:
            # Leave the session's vLLM as found: deleting the adapter unloads it.
            fake_api.delete("loraadapters", NAMESPACE, "support-tiny-v1")
            wait_for(
                lambda: fake_api.get("loraadapters", NAMESPACE, "support-tiny-v1") is None, timeout=30, message="gone"
            )
        assert not [m for m in vllm_server.models() if m.startswith("support-tiny-v1")]
