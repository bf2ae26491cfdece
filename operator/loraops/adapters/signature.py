"""LoraAdapter signatures (pure): the operator's `requireSignedAdapters` policy, what the agents are asked to
verify, which Secrets they must mount for it, and what the status reports once they did.

The agents do the verification (docs/security.md): the operator only turns `spec.source.signature` into a
request. A public key or CA chain in a ConfigMap is public material and travels in the request as PEM; one in
a Secret is mounted into the agent sidecars like read credentials and named by reference, so the operator
never reads Secrets.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from loraops.agent.models import SignatureCheck
from loraops.api.adapter import LoraAdapterSpec
from loraops.api.signing import KeySource, SignatureSpec, SignatureStatus
from loraops.config import OperatorConfig

from .placement import PlacementView
from .preflight import Verdict

Obj = dict[str, Any]
POLICY = "requireSignedAdapters"


def policy_refusal(spec: LoraAdapterSpec, namespace: str, config: OperatorConfig) -> Verdict | None:
    """`SignatureMissing` when the policy covers the namespace and the adapter names no signature check."""
    if spec.source.signature is not None or not config.requires_signature(namespace):
        return None
    scope = "every namespace" if "*" in config.require_signed_adapters else f"namespace {namespace}"
    return Verdict(
        "False",
        "SignatureMissing",
        f"the operator's {POLICY} policy covers {scope}: set source.signature (a public key, CA chain or "
        "Sigstore identity to verify model.sig with); the adapter is not loaded",
    )


def _key_source(signature: SignatureSpec) -> tuple[str, KeySource | None]:
    if signature.public_key is not None:
        return "publicKey", signature.public_key
    if signature.certificate_chain is not None:
        return "certificateChain", signature.certificate_chain
    return "sigstore", None


def secrets_for(spec: LoraAdapterSpec) -> set[str]:
    """Secrets holding a trust root: the agent sidecars mount them under their credentials folder."""
    signature = spec.source.signature
    if signature is None:
        return set()
    _, source = _key_source(signature)
    return {source.secret_ref.name} if source is not None and source.secret_ref is not None else set()


def config_map_name(signature: SignatureSpec | None) -> str | None:
    """The ConfigMap the operator must read for the request, if any."""
    if signature is None:
        return None
    _, source = _key_source(signature)
    return source.config_map_ref.name if source is not None and source.config_map_ref is not None else None


def agent_check(signature: SignatureSpec, config_map: Obj | None) -> SignatureCheck | Verdict:
    """The agent request's `signature`, or why it cannot be built (ConfigMap or key missing, not a public key)."""
    kind, source = _key_source(signature)
    if source is None:
        assert signature.sigstore is not None
        return SignatureCheck(kind="sigstore", identity=signature.sigstore.identity, issuer=signature.sigstore.issuer)
    if source.secret_ref is not None:
        return SignatureCheck(kind=kind, secret=source.secret_ref.name, key=source.secret_ref.key)
    ref = source.config_map_ref
    assert ref is not None
    if config_map is None:
        return Verdict("False", "SignatureKeyUnavailable", f"ConfigMap {ref.name} (source.signature) does not exist")
    pem = (config_map.get("data") or {}).get(ref.key)
    if not pem:
        return Verdict("False", "SignatureKeyUnavailable", f"ConfigMap {ref.name} has no key {ref.key!r}")
    try:
        return SignatureCheck(kind=kind, pem=pem)
    except ValidationError:
        # Never echo the value: a private key put in a ConfigMap by mistake must not reach status or Events.
        message = f"ConfigMap {ref.name} key {ref.key!r} is not usable as a {kind} (a private key must never be there)"
        return Verdict("False", "SignatureKeyUnavailable", message)


def signature_status(placements: list[PlacementView], digest: str | None) -> SignatureStatus | None:
    """Who signed and the subject digest, as an agent verified them for the pinned digest."""
    for placement in placements:
        if placement.state == "Loaded" and placement.digest == digest and placement.signature_digest:
            return SignatureStatus(
                signer=placement.signer or "unknown",
                subject_digest=placement.signature_digest,
                verified_at=placement.signature_verified_at,
            )
    return None
