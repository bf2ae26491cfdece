"""Signing and signature verification of adapters (OpenSSF model signing): references only, never key material.

A LoraTraining's `spec.signing` names the key the trainer signs with; a LoraAdapter's `spec.source.signature`
names what the agent verifies with. Private keys live in Secrets and reach the trainer as a read-only volume;
public keys and certificate chains are not secret, but they decide who is trusted, so they come from objects
that the platform team controls (a Secret or a ConfigMap), never from the adapter's own files.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, JsonValue, StringConstraints

from .common import ApiModel, ObjectName, Sha256

KeyName = Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
"""A key of a Secret or ConfigMap."""


KEY_SOURCE_RULES: list[JsonValue] = [
    {"rule": "has(self.secretRef) != has(self.configMapRef)", "message": "exactly one of secretRef or configMapRef"}
]
SIGNING_RULES: list[JsonValue] = [
    {
        "rule": "has(self.keySecretRef) != has(self.sigstore)",
        "message": "exactly one of signing.keySecretRef or signing.sigstore must be set",
    },
    {
        "rule": "!has(self.certificateSecretRef) || has(self.keySecretRef)",
        "message": "signing.certificateSecretRef needs signing.keySecretRef (the certificate's private key)",
        "fieldPath": ".certificateSecretRef",
    },
]
SIGNATURE_RULES: list[JsonValue] = [
    {
        "rule": "(has(self.publicKey) ? 1 : 0) + (has(self.certificateChain) ? 1 : 0) + (has(self.sigstore) ? 1 : 0)"
        " == 1",
        "message": "exactly one of signature.publicKey, signature.certificateChain or signature.sigstore must be set",
    }
]


class PrivateKeyReference(ApiModel):
    """A PEM private key (EC P-256/P-384/P-521) in a Secret of the same namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: KeyName = "private.pem"
    """Key of the Secret holding the PEM private key."""


class CertificateReference(ApiModel):
    """A Secret holding the signing certificate (and optionally its chain), PEM."""

    name: ObjectName
    """Name of the Secret."""
    key: KeyName = "certificate.pem"
    """Key holding the signing certificate (its public key must match `keySecretRef`)."""
    chain_key: KeyName | None = None
    """Key holding the intermediate certificates, concatenated PEM (optional)."""


class SigstoreSigning(ApiModel):
    """Sigstore keyless signing: the trainer pod's ambient OIDC identity gets a short-lived certificate from
    Fulcio and the signature is logged in Rekor. Needs network access to the Sigstore instance and an OIDC
    token in the pod; not usable in air-gapped clusters (use a key there)."""


class SigningSpec(ApiModel):
    """How the trainer signs the finished adapter (OpenSSF model signing, `model.sig` next to the files).
    Exactly one of `keySecretRef` (optionally with `certificateSecretRef`) or `sigstore`."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SIGNING_RULES})

    key_secret_ref: PrivateKeyReference | None = None
    """Private key to sign with, mounted read-only into the trainer pod; never copied into the Job spec."""
    certificate_secret_ref: CertificateReference | None = None
    """Sign with a certificate (for the key above) instead of a bare key; verifiers then trust a CA chain."""
    sigstore: SigstoreSigning | None = None
    """Keyless signing with Sigstore (needs network access, see `SigstoreSigning`)."""


class KeyReference(ApiModel):
    """A key of a Secret or ConfigMap in the same namespace."""

    name: ObjectName
    """Name of the object."""
    key: KeyName = "public.pem"
    """Key whose value is the PEM text."""


class KeySource(ApiModel):
    """PEM text in a Secret or a ConfigMap of the adapter's namespace. Exactly one of the two."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": KEY_SOURCE_RULES})

    secret_ref: KeyReference | None = None
    """A Secret key: mounted into the agent sidecars like credentials, never read by the operator."""
    config_map_ref: KeyReference | None = None
    """A ConfigMap key: read by the operator and passed to the agents as PEM (public material only)."""


class SigstoreIdentity(ApiModel):
    """Who must have signed, for Sigstore keyless signatures (checked against the certificate in the bundle)."""

    identity: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The signer's identity, e.g. a workload's OIDC subject or an e-mail address."""
    issuer: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The OIDC issuer that vouched for it, e.g. `https://token.actions.githubusercontent.com`."""


class SignatureSpec(ApiModel):
    """Verify the adapter's OpenSSF model signature before every load, in addition to the digest pin.
    Exactly one of `publicKey`, `certificateChain` or `sigstore`. A missing or invalid signature keeps the
    adapter from loading (condition `Verified` False, reason `SignatureMissing` / `SignatureInvalid`)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SIGNATURE_RULES})

    public_key: KeySource | None = None
    """The PEM public key whose private key signed the adapter."""
    certificate_chain: KeySource | None = None
    """The PEM CA chain the signing certificate must chain to."""
    sigstore: SigstoreIdentity | None = None
    """Sigstore keyless: the expected identity and issuer (the agent needs network access to Sigstore)."""


class SignatureStatus(ApiModel):
    """The signature as the agents verified it before loading."""

    signer: str
    """Who signed: `key sha256:<fingerprint of the public key>`, the certificate's subject, or the Sigstore
    identity."""
    subject_digest: Sha256
    """The signed statement's subject digest (sha256 over the signed files' digests)."""
    verified_at: datetime | None = None
    """When an agent last verified it."""
