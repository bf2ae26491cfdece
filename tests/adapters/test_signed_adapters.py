"""Signed adapters through the LoraAdapter controller (real kopf, fake API, real agents in front of fake vLLMs):
the signature spec reaches the agents, status records who signed, failures turn `Verified` False with their
reason and nothing is loaded, and the `requireSignedAdapters` policy refuses unsigned adapters by name."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry
from loraops_trainer.manifest import build_manifest, hash_directory, write_manifest
from loraops_trainer.signing import sign_folder
from tests.conftest import NAMESPACE
from tests.signing_support import KeyPair, assert_no_key_material, make_keypair
from tests.support import wait_for

from .conftest import Cluster, adapter_manifest, make_adapter

pytestmark = pytest.mark.adapters


@pytest.fixture
def adapter_operator(fake_api: FakeKubeApi, adapter_config: OperatorConfig) -> Iterator[OperatorThread]:
    """The operator with the policy on for the test namespace."""
    config = adapter_config.model_copy(update={"require_signed_adapters": [NAMESPACE]})
    with OperatorThread(fake_api.url, registry=build_registry(config, login=False), namespaces=[NAMESPACE]) as runner:
        yield runner


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> KeyPair:
    return make_keypair(tmp_path / "keys")


def signed_folder(root: pathlib.Path, keys: KeyPair, seed: int = 0) -> tuple[pathlib.Path, str]:
    folder, _ = make_adapter(root, seed)
    (folder / "loraops-manifest.json").unlink()
    sign_folder(folder, private_key=keys.private)
    write_manifest(folder, build_manifest(folder, kind="adapter", merge_state="unmerged"))
    return folder, hash_directory(folder)[0]


def condition(api: FakeKubeApi, name: str, type_: str) -> dict[str, Any]:
    obj = api.get("loraadapters", NAMESPACE, name) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def apply(api: FakeKubeApi, example: dict[str, Any], name: str, folder: pathlib.Path, digest: str, **sig: Any) -> None:
    body = adapter_manifest(example, name, folder, digest)
    if sig:
        body["spec"]["source"]["signature"] = sig
    api.create("loraadapters", body, NAMESPACE)


def scan_everything(api: FakeKubeApi, keys: KeyPair) -> None:
    for name in ("signed", "wrong-key", "unsigned"):
        status = (api.get("loraadapters", NAMESPACE, name) or {}).get("status")
        assert_no_key_material(f"status of {name}", status, keys)
    assert_no_key_material("events", api.list("events", NAMESPACE), keys)
    assert_no_key_material("deployment", api.get("deployments", NAMESPACE, "llama-8b"), keys)


def test_signature_verified_refused_and_required_by_policy(
    fake_api: FakeKubeApi,
    cluster: Cluster,
    adapter_operator: Any,
    examples: dict[str, Any],
    tmp_path: pathlib.Path,
    keys: KeyPair,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    intruder = make_keypair(tmp_path / "keys", "intruder")
    fake_api.create(
        "configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "signers"},
         "data": {"public.pem": keys.public_pem}},
        NAMESPACE,
    )  # fmt: skip
    fake_api.create(
        "configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "intruders"},
         "data": {"public.pem": intruder.public_pem}},
        NAMESPACE,
    )  # fmt: skip
    good, good_digest = signed_folder(tmp_path / "artifacts" / "signed", keys)
    other, other_digest = signed_folder(tmp_path / "artifacts" / "wrong-key", keys, seed=3)
    plain, plain_digest = make_adapter(tmp_path / "artifacts" / "unsigned", 5)
    example = examples["LoraAdapter"]
    apply(fake_api, example, "signed", good, good_digest, publicKey={"configMapRef": {"name": "signers"}})
    apply(fake_api, example, "wrong-key", other, other_digest, publicKey={"configMapRef": {"name": "intruders"}})
    apply(fake_api, example, "unsigned", plain, plain_digest)
    pod = cluster.add_pod()

    def status(name: str) -> dict[str, Any]:
        return (fake_api.get("loraadapters", NAMESPACE, name) or {}).get("status") or {}

    ready = wait_for(lambda: status("signed") if status("signed").get("phase") == "Ready" else None, timeout=30)
    assert ready["signature"]["signer"].startswith("key sha256:")
    assert len(ready["signature"]["subjectDigest"]) == 64 and ready["signature"]["verifiedAt"]
    assert condition(fake_api, "signed", "Verified")["status"] == "True"

    refused = wait_for(lambda: condition(fake_api, "wrong-key", "Verified").get("reason"), timeout=30)
    assert refused == "SignatureInvalid", condition(fake_api, "wrong-key", "Verified")
    assert condition(fake_api, "wrong-key", "Verified")["status"] == "False"

    missing = condition(fake_api, "unsigned", "Verified")
    assert (missing["status"], missing["reason"]) == ("False", "SignatureMissing")
    assert "requireSignedAdapters" in missing["message"]

    assert cluster.releases(pod) == {"signed"}, "only the verified adapter reaches vLLM"
    loads = [b["lora_name"] for b in cluster.replicas.replicas[pod].vllm.loads()]  # type: ignore[union-attr]
    assert loads and not any(n.startswith(("wrong-key", "unsigned")) for n in loads)
    for pair in (keys, intruder):
        scan_everything(fake_api, pair)
        assert_no_key_material("operator and agent logs", caplog.text, pair)
    assert "SignatureInvalid" in caplog.text, "the logs were captured (the agent logs its refusal)"
