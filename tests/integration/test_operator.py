"""The operator skeleton with real kopf against the fake API: status, printer columns, faults, finalizers."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import kubernetes
import pytest
import yaml

from loraops.api import KINDS
from loraops.config import FINALIZER
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.vllm import free_port
from tests.conftest import NAMESPACE, REPO
from tests.support import Kubectl, wait_for

pytestmark = pytest.mark.operator


def accepted(api: FakeKubeApi, resource: str, name: str, generation: int = 1) -> dict[str, Any] | None:
    obj = api.get(resource, NAMESPACE, name)
    status = (obj or {}).get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    ok = status.get("observedGeneration") == generation and conditions.get("Accepted", {}).get("status") == "True"
    return obj if ok else None


def example_names() -> dict[str, str]:
    docs = [d for p in sorted((REPO / "examples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["kind"]: d["metadata"]["name"] for d in docs}


def test_kubectl_apply_examples_then_operator_sets_status_and_get_shows_columns(
    fake_api: FakeKubeApi, kubectl: Kubectl, operator: Any
) -> None:
    result = kubectl("apply", "--validate=false", "-f", str(REPO / "examples"))
    assert result.stdout.count("created") == 4, result.stdout
    names = example_names()
    for kind in KINDS:
        obj = wait_for(lambda k=kind: accepted(fake_api, k.plural, names[k.kind]), message=f"{kind.kind} accepted")
        assert obj["status"]["phase"] == "Pending"
        assert FINALIZER in obj["metadata"]["finalizers"]

    table = kubectl("get", "lt,la,ar").stdout
    lines = table.splitlines()
    headers = [line.split() for line in lines if line.startswith("NAME")]
    assert ["NAME", "BASE", "METHOD", "PHASE", "PROGRESS", "LOSS", "AGE"] in headers
    assert ["NAME", "MODEL", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"] in headers
    assert any(h[:3] == ["NAME", "BASE", "VERSION"] and "READY" in h and "Δ" in h for h in headers), table
    assert any(line.startswith("loraadapter.loraops.io/support-v1") and "Pending" in line for line in lines), table
    assert any("meta-llama/Llama-3.1-8B-Instruct" in line and "qlora" in line for line in lines), table


def test_status_follows_spec_changes_with_observed_generation(
    fake_api: FakeKubeApi, kubectl: Kubectl, operator: Any, tmp_path: pathlib.Path
) -> None:
    kubectl("apply", "--validate=false", "-f", str(REPO / "examples" / "40-route.yaml"))
    wait_for(lambda: accepted(fake_api, "adapterroutes", "support-bot"), message="route accepted")
    kubectl("patch", "ar", "support-bot", "--type=merge", "-p", '{"spec": {"adapter": "support-v2"}}')
    obj = wait_for(lambda: accepted(fake_api, "adapterroutes", "support-bot", generation=2), message="generation 2")
    assert obj["metadata"]["generation"] == 2


def test_an_invalid_stored_spec_is_reported_in_status(fake_api: FakeKubeApi, operator: Any) -> None:
    # The fake API does no admission: this is what an outdated CRD on a real cluster would let through.
    manifest = yaml.safe_load((REPO / "examples" / "30-adapter.yaml").read_text())
    manifest["spec"]["lora"]["rank"] = 0
    fake_api.create("loraadapters", manifest, NAMESPACE)

    def rejected() -> dict[str, Any] | None:
        status = (fake_api.get("loraadapters", NAMESPACE, "support-v1") or {}).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = wait_for(rejected, message="InvalidSpec")
    (condition,) = status["conditions"]
    assert condition["reason"] == "InvalidSpec" and "spec.lora.rank" in condition["message"]


@pytest.mark.parametrize("code", [409, 500])
def test_status_converges_through_failed_status_patches(
    fake_api: FakeKubeApi, kubectl: Kubectl, operator: Any, code: int
) -> None:
    fault = fake_api.inject_fault("PATCH", r"/loratrainings/support-v2/status", status=code, count=5)
    kubectl("apply", "--validate=false", "-f", str(REPO / "examples" / "20-training.yaml"))
    obj = wait_for(
        lambda: accepted(fake_api, "loratrainings", "support-v2"), timeout=30, message="status despite faults"
    )
    assert obj["status"]["phase"] == "Pending"
    assert fault.hits == fault.count == 5, "every injected fault was hit"
    assert fake_api.request_count("PATCH", r"/loratrainings/support-v2/status") >= 6


def test_delete_runs_the_finalizer_and_the_object_goes(fake_api: FakeKubeApi, kubectl: Kubectl, operator: Any) -> None:
    kubectl("apply", "--validate=false", "-f", str(REPO / "examples" / "30-adapter.yaml"))
    obj = wait_for(lambda: accepted(fake_api, "loraadapters", "support-v1"), message="adapter accepted")
    client = kubernetes.config.new_client_from_config(str(kubectl.kubeconfig))
    api = kubernetes.client.CustomObjectsApi(client)
    seen: list[tuple[str, dict[str, Any]]] = []

    def watch() -> None:
        stream = kubernetes.watch.Watch().stream(
            api.list_namespaced_custom_object,
            "loraops.io",
            "v1alpha1",
            NAMESPACE,
            "loraadapters",
            resource_version=obj["metadata"]["resourceVersion"],
            timeout_seconds=15,
        )
        for event in stream:
            seen.append((event["type"], event["object"]))
            if event["type"] == "DELETED":
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.3)  # the watch is open before the delete
    kubectl("delete", "la", "support-v1", "--wait=false")
    watcher.join(20)
    client.close()
    assert seen and seen[-1][0] == "DELETED", [t for t, _ in seen]
    deleting = [o for _, o in seen if o["metadata"].get("deletionTimestamp")]
    assert deleting, "deletion went through deletionTimestamp"
    assert FINALIZER in deleting[0]["metadata"]["finalizers"], "the finalizer held the object"
    assert FINALIZER not in (seen[-1][1]["metadata"].get("finalizers") or []), "the handler removed it"
    assert fake_api.get("loraadapters", NAMESPACE, "support-v1") is None


def test_loraops_operator_command_serves_liveness_and_metrics(fake_api: FakeKubeApi, kubectl: Kubectl) -> None:
    liveness, metrics = free_port(), free_port()
    command = [
        sys.executable, "-m", "loraops.cli", "operator", "--server", fake_api.url, "--insecure",
        "--namespace", NAMESPACE, "--liveness-port", str(liveness), "--metrics-port", str(metrics),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kubectl("apply", "--validate=false", "-f", str(REPO / "examples"))
        for kind in KINDS:
            wait_for(lambda k=kind: accepted(fake_api, k.plural, example_names()[k.kind]), timeout=60)

        def get(port: int, path: str) -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    return str(response.read().decode())
            except OSError:
                return None

        assert wait_for(lambda: get(liveness, "/healthz") is not None, message="/healthz answers")
        text = wait_for(lambda: get(metrics, "/metrics"), message="/metrics answers")
        for kind in KINDS:
            assert f'loraops_reconcile_total{{kind="{kind.kind}",result="ok"}}' in text
            assert f'loraops_reconcile_duration_seconds_count{{kind="{kind.kind}"}}' in text
        assert "loraops_reconcile_errors_total" in text
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode in (0, -15), output
