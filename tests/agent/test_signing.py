"""Signed adapters at the agent: verified with OpenSSF model signing before every load, in addition to the
digest pin; refused with `SignatureInvalid` / `SignatureMissing` otherwise, and then never loaded."""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from loraops.agent.client import AgentError
from loraops.agent.models import PutAdapter, SignatureCheck
from loraops_trainer.manifest import build_manifest, hash_directory, write_manifest
from loraops_trainer.signing import SIGNATURE_FILE, key_fingerprint, sign_folder
from tests.signing_support import KeyPair, assert_no_key_material, make_keypair

pytestmark = [pytest.mark.adapters, pytest.mark.asyncio]

Factory = Callable[..., Any]


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> KeyPair:
    return make_keypair(tmp_path / "keys")


@pytest.fixture
def other_keys(tmp_path: pathlib.Path) -> KeyPair:
    return make_keypair(tmp_path / "keys", "intruder")


def signed_adapter(
    new_adapter: Factory, folder: pathlib.Path, keys: KeyPair, seed: int = 0
) -> tuple[pathlib.Path, str]:
    """A PEFT folder signed like the trainer signs (before the manifest), then given its manifest."""
    root, _ = new_adapter(folder, manifest=False, seed=seed)
    sign_folder(root, private_key=keys.private)
    write_manifest(root, build_manifest(root, kind="adapter", merge_state="unmerged"))
    digest, _ = hash_directory(root)
    return root, digest


def by_key(keys: KeyPair) -> SignatureCheck:
    return SignatureCheck(kind="publicKey", pem=keys.public_pem)


async def refused(running: Any, name: str, uri: str, digest: str, check: SignatureCheck | None) -> AgentError:
    with pytest.raises(AgentError) as caught:
        await running.client.put(name, uri, digest, signature=check)
    return caught.value


async def test_a_signed_adapter_is_verified_then_loaded_and_the_record_names_the_signer(
    start_agent: Factory, fake_vllm: Any, new_adapter: Factory, tmp_path: pathlib.Path, keys: KeyPair
) -> None:
    root, digest = signed_adapter(new_adapter, tmp_path / "src" / "signed", keys)
    running = await start_agent()
    record = await running.client.put("signed", root.as_uri(), digest, signature=by_key(keys))
    assert record.state == "Loaded" and [b["lora_name"] for b in fake_vllm.loads()] == ["signed"]
    bundle = json.loads((root / SIGNATURE_FILE).read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert record.signature_digest == statement["subject"][0]["digest"]["sha256"]
    from cryptography.hazmat.primitives import serialization

    fingerprint = key_fingerprint(serialization.load_pem_public_key(keys.public.read_bytes()))
    assert record.signer == f"key sha256:{fingerprint}"
    assert record.signature_verified_at is not None
    # The installed folder is what vLLM loads: the signature travels with it, the pinned digest is unchanged.
    installed = running.config.adapters_dir / "signed" / digest
    assert (installed / SIGNATURE_FILE).is_file() and hash_directory(installed)[0] == digest


async def test_a_public_key_from_a_mounted_secret_verifies_the_same_way(
    start_agent: Factory, new_adapter: Factory, tmp_path: pathlib.Path, keys: KeyPair
) -> None:
    root, digest = signed_adapter(new_adapter, tmp_path / "src" / "signed", keys)
    credentials = tmp_path / "credentials"
    (credentials / "adapter-signers").mkdir(parents=True)
    shutil.copy(keys.public, credentials / "adapter-signers" / "public.pem")
    running = await start_agent(credentials_dir=credentials)
    check = SignatureCheck(kind="publicKey", secret="adapter-signers")
    record = await running.client.put("signed", root.as_uri(), digest, signature=check)
    assert record.state == "Loaded" and record.signature_digest is not None


@pytest.mark.parametrize("case", ["tampered", "wrong-key", "missing", "other-folder", "not-a-signature"])
async def test_a_bad_signature_is_refused_with_its_reason_and_never_loaded(
    case: str,
    start_agent: Factory,
    fake_vllm: Any,
    new_adapter: Factory,
    tmp_path: pathlib.Path,
    keys: KeyPair,
    other_keys: KeyPair,
    list_tree: Callable[[pathlib.Path], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, digest = signed_adapter(new_adapter, tmp_path / "src" / "release", keys)
    check = by_key(keys)
    expected = "SignatureInvalid"
    if case == "tampered":
        # One weight byte changed after signing, and the pin taken from the changed folder: the digest passes,
        # only the signature can tell.
        weights = root / "adapter_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        write_manifest(root, build_manifest(root, kind="adapter", merge_state="unmerged"))
        digest, _ = hash_directory(root)
        message = "hash mismatch for 'adapter_model.safetensors'"
    elif case == "wrong-key":
        check = by_key(other_keys)
        message = "Key mismatch"
    elif case == "missing":
        (root / SIGNATURE_FILE).unlink()
        expected, message = "SignatureMissing", "no signature model.sig"
    elif case == "other-folder":
        other, _ = signed_adapter(new_adapter, tmp_path / "src" / "other", keys, seed=7)
        shutil.copy(other / SIGNATURE_FILE, root / SIGNATURE_FILE)
        message = "hash mismatch for 'adapter_model.safetensors'"
    else:
        (root / SIGNATURE_FILE).write_text('{"mediaType": "x"}', encoding="utf-8")
        message = "not a model-signing bundle"
    running = await start_agent()
    caplog.set_level(logging.DEBUG)
    error = await refused(running, "release", root.as_uri(), digest, check)
    assert (error.status, error.reason) == (422, expected), error
    assert message in error.message
    assert fake_vllm.loads() == [], "vLLM was asked to load an adapter whose signature failed"
    assert list_tree(running.config.adapters_dir) == [], "nothing of a refused adapter stays on the volume"
    (record,) = await running.client.list()
    assert (record.state, record.reason) == ("Failed", expected) and record.signer is None
    metrics = generate_latest(running.agent.metrics.registry).decode()
    assert f'loraops_agent_failures_total{{reason="{expected}"}} 1.0' in metrics
    scanned = {"record": record.wire(), "error": error.message, "logs": caplog.text, "metrics": metrics}
    for where, value in scanned.items():
        assert_no_key_material(where, value, keys)
        assert_no_key_material(where, value, other_keys)


async def test_a_requiring_agent_refuses_a_put_without_a_signature_check(
    start_agent: Factory, fake_vllm: Any, new_adapter: Factory, tmp_path: pathlib.Path, keys: KeyPair
) -> None:
    root, digest = signed_adapter(new_adapter, tmp_path / "src" / "signed", keys)
    running = await start_agent(require_signed=True)
    error = await refused(running, "signed", root.as_uri(), digest, None)
    assert (error.status, error.reason) == (422, "SignatureMissing") and "--require-signed" in error.message
    assert fake_vllm.loads() == []
    # The same adapter with its check passes: the policy refuses the request, not the bytes.
    record = await running.client.put("signed", root.as_uri(), digest, signature=by_key(keys))
    assert record.state == "Loaded"


async def test_an_adapter_loaded_unchecked_is_unloaded_when_a_later_put_asks_for_a_failing_signature(
    start_agent: Factory,
    fake_vllm: Any,
    new_adapter: Factory,
    tmp_path: pathlib.Path,
    keys: KeyPair,
    other_keys: KeyPair,
) -> None:
    root, digest = signed_adapter(new_adapter, tmp_path / "src" / "signed", keys)
    running = await start_agent()
    await running.client.put("signed", root.as_uri(), digest)
    assert "signed" in fake_vllm.adapters
    error = await refused(running, "signed", root.as_uri(), digest, by_key(other_keys))
    assert error.reason == "SignatureInvalid"
    assert "signed" not in fake_vllm.adapters, "an adapter whose signature fails must stop serving"
    # With the right key the same request verifies the bytes and loads again.
    record = await running.client.put("signed", root.as_uri(), digest, signature=by_key(keys))
    assert record.state == "Loaded" and record.signature_digest is not None and "signed" in fake_vllm.adapters


async def test_a_private_key_in_a_request_is_refused_before_anything_happens(keys: KeyPair) -> None:
    with pytest.raises(ValueError, match="private key"):
        PutAdapter(uri="file:///x", digest="0" * 64, signature={"kind": "publicKey", "pem": keys.private_pem})


async def test_a_private_key_in_a_put_body_answers_400_without_echoing_it(
    start_agent: Factory, fake_vllm: Any, keys: KeyPair
) -> None:
    running = await start_agent()
    body = {"uri": "file:///x", "digest": "0" * 64, "signature": {"kind": "publicKey", "pem": keys.private_pem}}
    async with running.client._client().put(f"{running.url}/v1/adapters/leak", json=body) as response:
        text = await response.text()
        assert response.status == 400
    assert_no_key_material("the 400 answer", text, keys)
    assert fake_vllm.loads() == []
