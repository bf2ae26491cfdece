"""The pure part of signed adapters in the controller: policy, the agents' request, mounted Secrets, status."""

from __future__ import annotations

import copy
import pathlib
from datetime import UTC, datetime
from typing import Any

import pytest

from loraops.adapters.fleet import members, needs
from loraops.adapters.placement import PlacementView
from loraops.adapters.preflight import Verdict
from loraops.adapters.signature import agent_check, policy_refusal, secrets_for, signature_status
from loraops.api.adapter import LoraAdapterSpec
from loraops.config import OperatorConfig
from tests.signing_support import assert_no_key_material, make_keypair

pytestmark = pytest.mark.adapters


def spec_with(example: dict[str, Any], signature: dict[str, Any] | None) -> LoraAdapterSpec:
    raw = copy.deepcopy(example["spec"])
    if signature is not None:
        raw["source"]["signature"] = signature
    return LoraAdapterSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("policy", "namespace", "refused"),
    [([], "team-a", False), (["team-a"], "team-a", True), (["team-a"], "team-b", False), (["*"], "team-b", True)],
)
def test_the_policy_refuses_unsigned_adapters_only_where_it_applies(
    examples: dict[str, Any], policy: list[str], namespace: str, refused: bool
) -> None:
    config = OperatorConfig(require_signed_adapters=policy)
    verdict = policy_refusal(spec_with(examples["LoraAdapter"], None), namespace, config)
    assert (verdict is not None) == refused
    if verdict is not None:
        assert (verdict.status, verdict.reason) == ("False", "SignatureMissing")
        assert "requireSignedAdapters" in verdict.message
    signed = spec_with(examples["LoraAdapter"], {"sigstore": {"identity": "ci@example.com", "issuer": "https://x"}})
    assert policy_refusal(signed, namespace, config) is None


def test_a_config_map_key_becomes_pem_and_a_secret_a_mounted_reference(
    examples: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    keys = make_keypair(tmp_path)
    by_map = spec_with(examples["LoraAdapter"], {"publicKey": {"configMapRef": {"name": "signers"}}})
    assert by_map.source.signature is not None
    check = agent_check(by_map.source.signature, {"data": {"public.pem": keys.public_pem}})
    assert not isinstance(check, Verdict) and check.kind == "publicKey" and check.pem == keys.public_pem
    missing = agent_check(by_map.source.signature, None)
    assert isinstance(missing, Verdict) and missing.reason == "SignatureKeyUnavailable"
    # A private key put in the ConfigMap by mistake is refused, and its bytes go nowhere.
    leaked = agent_check(by_map.source.signature, {"data": {"public.pem": keys.private_pem}})
    assert isinstance(leaked, Verdict) and leaked.reason == "SignatureKeyUnavailable"
    assert_no_key_material("verdict", leaked.message, keys)

    by_secret = spec_with(
        examples["LoraAdapter"], {"certificateChain": {"secretRef": {"name": "ca-chain", "key": "ca.pem"}}}
    )
    assert by_secret.source.signature is not None
    check = agent_check(by_secret.source.signature, None)
    assert not isinstance(check, Verdict)
    assert (check.kind, check.secret, check.key, check.pem) == ("certificateChain", "ca-chain", "ca.pem", None)
    assert secrets_for(by_secret) == {"ca-chain"} and secrets_for(by_map) == set()


def test_the_trust_root_secret_is_mounted_into_the_agents(examples: dict[str, Any]) -> None:
    body = copy.deepcopy(examples["LoraAdapter"])
    body["spec"]["source"]["signature"] = {"publicKey": {"secretRef": {"name": "adapter-signers"}}}
    group = members([body], {}, body["spec"]["serving"]["deployment"])
    assert "adapter-signers" in needs(group, None, OperatorConfig()).credentials


def test_status_takes_the_signer_from_a_loaded_placement_of_the_pinned_digest() -> None:
    when = datetime(2026, 11, 29, tzinfo=UTC)
    views = [
        PlacementView("pod-a", "Loaded", "a" * 64, signer="key sha256:old", signature_digest="1" * 64),
        PlacementView("pod-b", "Loaded", "b" * 64, signer="key sha256:new", signature_digest="2" * 64,
                      signature_verified_at=when),
    ]  # fmt: skip
    status = signature_status(views, "b" * 64)
    assert status is not None and (status.signer, status.subject_digest, status.verified_at) == (
        "key sha256:new",
        "2" * 64,
        when,
    )
    assert signature_status(views, "c" * 64) is None


@pytest.mark.parametrize(
    "signature",
    [
        {},
        {"publicKey": {"configMapRef": {"name": "a"}}, "sigstore": {"identity": "i", "issuer": "https://x"}},
        {"publicKey": {"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}},
        {"publicKey": {"secretRef": {"name": "b", "privateKey": "-----BEGIN EC PRIVATE KEY-----"}}},
    ],
)
def test_the_api_refuses_a_signature_spec_without_exactly_one_trust_root(
    examples: dict[str, Any], signature: dict[str, Any]
) -> None:
    from loraops.api.validation import ManifestInvalid, validate

    manifest = copy.deepcopy(examples["LoraAdapter"])
    manifest["spec"]["source"]["signature"] = signature
    with pytest.raises(ManifestInvalid) as caught:
        validate(manifest)
    assert "signature" in str(caught.value.errors)
