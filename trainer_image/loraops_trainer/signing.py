"""OpenSSF model signing of adapter folders: sign (trainer, `loraops sign`) and verify (agent, `loraops verify`).

One implementation for the trainer, the agent and the CLI, so that what one side writes the other reads. It
imports neither torch nor the operator.

What a signature covers: every file of the folder that the library hashes, except `model.sig` (the signature
itself) and `loraops-manifest.json` (it records the signature's subject digest, so it is written after
signing and cannot be inside it). These are the files of the digest rule (`manifest.py`), which also leaves
both out: signing a folder never changes the digest a LoraAdapter pins. On top of the library's own check
(every signed file present with its hash, no file that is not signed), `verify_folder` requires every file of
the digest rule to be among the signed ones, so a signature whose signer chose to ignore, say, the weights
cannot pass for the whole adapter.

The signature is a Sigstore bundle whose DSSE payload is an in-toto statement: `subject[0].digest.sha256` is
the sha256 over the signed files' digests (in name order) — the "subject digest" recorded in the manifest,
the agent's record and the LoraAdapter's status.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .manifest import SIGNATURE_NAME, listed_files
from .storage import MANIFEST_NAME

SIGNATURE_FILE = SIGNATURE_NAME
IGNORED = (MANIFEST_NAME, SIGNATURE_FILE)
Method = Literal["key", "certificate", "sigstore"]


class SignatureError(ConfigError):
    """`SignatureMissing` (no signature file), `SignatureInvalid` (anything else that fails to verify) or
    `SigningFailed`. A config error for the trainer (exit 3): a wrong key does not get better on retry."""


@dataclass(frozen=True)
class SignatureFacts:
    """What a (verified or freshly written) signature says."""

    subject_digest: str
    method: Method
    signer: str
    """`key sha256:<fingerprint>` (sha256 of the DER public key), the certificate's subject, or the Sigstore
    identity."""
    files: dict[str, str] = field(default_factory=dict)
    """Signed file → sha256 hex."""

    def as_dict(self) -> dict[str, Any]:
        return {"subjectDigest": self.subject_digest, "method": self.method, "signer": self.signer}


def key_fingerprint(public_key: Any) -> str:
    """sha256 of the public key as canonical PEM (SubjectPublicKeyInfo): the `hint` model-signing writes into
    key bundles, so signer and verifier name the same key the same way
    (`openssl pkey -pubin -in pub.pem | sha256sum`)."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


_MISMATCH = re.compile(
    r"Hash mismatch for \\?'([^'\\]+)"  # the file name; the reprs of both digests that follow are dropped
    r"|(Extra|Missing) files (?:found )?in model '[^']*': ([^'\]\"]+)"
)


def _mismatch_message(text: str) -> str:
    """The library's mismatch message names each file with two `Digest(...)` reprs of raw bytes; keep the names."""
    parts = []
    for changed, kind, names in _MISMATCH.findall(text):
        parts.append(f"hash mismatch for {changed!r}" if changed else f"{kind.lower()} files: {names.strip()}")
    return "; ".join(parts[:5]) if parts else text


def _statement(signature: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(bundle, in-toto statement) of a signature file, unverified: only to read what it claims."""
    try:
        bundle = json.loads(signature.read_text(encoding="utf-8"))
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["subject"][0]["digest"]["sha256"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise SignatureError("SignatureInvalid", f"{signature.name} is not a model-signing bundle ({error})") from None
    if not isinstance(bundle, dict) or not isinstance(statement, dict):
        raise SignatureError("SignatureInvalid", f"{signature.name} is not a model-signing bundle")
    return bundle, statement


def _facts(statement: dict[str, Any], method: Method, signer: str) -> SignatureFacts:
    resources = statement.get("predicate", {}).get("resources", [])
    files = {str(r.get("name")): str(r.get("digest")) for r in resources if isinstance(r, dict)}
    return SignatureFacts(
        subject_digest=str(statement["subject"][0]["digest"]["sha256"]), method=method, signer=signer, files=files
    )


def _certificate_subject(bundle: dict[str, Any]) -> str:
    from cryptography import x509

    material = bundle.get("verificationMaterial", {})
    chain = material.get("x509CertificateChain", {}).get("certificates") or []
    raw = chain[0].get("rawBytes") if chain else (material.get("certificate") or {}).get("rawBytes")
    if not raw:
        return "certificate (no subject in the bundle)"
    certificate = x509.load_der_x509_certificate(base64.b64decode(raw))
    return certificate.subject.rfc4514_string() or "certificate (empty subject)"


def signature_path(folder: pathlib.Path, signature: pathlib.Path | None) -> pathlib.Path:
    return signature if signature is not None else folder / SIGNATURE_FILE


def _ignored(folder: pathlib.Path, signature: pathlib.Path) -> list[str]:
    names = list(IGNORED)
    # A signature written inside the folder under another name must not sign (or later fail) itself.
    with contextlib.suppress(ValueError):
        names.append(signature.resolve().relative_to(folder.resolve()).as_posix())
    return names


def sign_folder(
    folder: pathlib.Path,
    *,
    private_key: pathlib.Path | None = None,
    certificate: pathlib.Path | None = None,
    certificate_chain: Sequence[pathlib.Path] = (),
    sigstore: bool = False,
    signature: pathlib.Path | None = None,
) -> SignatureFacts:
    """Sign `folder` (default signature: `folder/model.sig`) with a key, a certificate or Sigstore (ambient
    OIDC credentials; needs network). Raises SignatureError("SigningFailed") with the library's message."""
    from model_signing import hashing, signing

    target = signature_path(folder, signature)
    hashing_config = hashing.Config().set_ignored_paths(paths=_ignored(folder, target))
    config = signing.Config().set_hashing_config(hashing_config)
    method: Method
    try:
        if sigstore:
            config.use_sigstore_signer(use_ambient_credentials=True)
            method, signer = "sigstore", "sigstore (ambient identity)"
        elif private_key is not None and certificate is not None:
            config.use_certificate_signer(
                private_key=private_key, signing_certificate=certificate, certificate_chain=list(certificate_chain)
            )
            method, signer = "certificate", ""
        elif private_key is not None:
            config.use_elliptic_key_signer(private_key=private_key)
            method, signer = "key", ""
        else:
            raise SignatureError("SigningFailed", "nothing to sign with: give a private key or sigstore")
        config.sign(folder, target)
    except SignatureError:
        raise
    except Exception as error:  # the library raises ValueError, OSError, cryptography's errors …
        # The message names the problem, never the key's bytes (the library does not echo them).
        message = f"signing {folder.name} failed: {type(error).__name__}: {error}"
        raise SignatureError("SigningFailed", message) from None
    bundle, statement = _statement(target)
    if method == "key":
        signer = f"key sha256:{bundle.get('verificationMaterial', {}).get('publicKey', {}).get('hint', '?')}"
    elif method == "certificate":
        signer = _certificate_subject(bundle)
    return _facts(statement, method, signer)


def verify_folder(
    folder: pathlib.Path,
    *,
    public_key: pathlib.Path | None = None,
    certificate_chain: Sequence[pathlib.Path] = (),
    sigstore_identity: str | None = None,
    sigstore_issuer: str | None = None,
    signature: pathlib.Path | None = None,
) -> SignatureFacts:
    """Verify `folder` against its signature (default `folder/model.sig`) with exactly one trust root: a
    public key, a CA chain, or a Sigstore identity + issuer. Returns what the signature says; raises
    SignatureError(`SignatureMissing` | `SignatureInvalid`) with the reason in the message."""
    from model_signing import hashing, verifying

    source = signature_path(folder, signature)
    if not source.is_file():
        raise SignatureError("SignatureMissing", f"no signature {source.name} in {folder.name}")
    bundle, statement = _statement(source)
    serialization = statement.get("predicate", {}).get("serialization", {})
    method: Method
    config = verifying.Config()
    if public_key is not None:
        config.use_elliptic_key_verifier(public_key=public_key)
        method, signer = "key", f"key sha256:{_fingerprint_of_file(public_key)}"
    elif certificate_chain:
        config.use_certificate_verifier(certificate_chain=list(certificate_chain))
        method, signer = "certificate", _certificate_subject(bundle)
    elif sigstore_identity and sigstore_issuer:
        config.use_sigstore_verifier(identity=sigstore_identity, oidc_issuer=sigstore_issuer)
        method, signer = "sigstore", f"{sigstore_identity} ({sigstore_issuer})"
    else:
        raise SignatureError("SignatureInvalid", "no trust root to verify with (public key, CA chain or sigstore)")
    try:
        # The library guesses the hashing from the signature; we set it ourselves to the same parameters, plus
        # the signature's own name, so a signature written outside the folder and then copied in as model.sig
        # (an external pipeline's habit) does not count as an unsigned extra file.
        algorithm = serialization.get("hash_type", "sha256")
        hashing_config = hashing.Config()
        if serialization.get("method") == "shards":
            hashing_config.use_shard_serialization(
                hashing_algorithm=algorithm, shard_size=int(serialization["shard_size"]), allow_symlinks=False
            )
        else:
            hashing_config.use_file_serialization(hashing_algorithm=algorithm, allow_symlinks=False)
        hashing_config.set_ignored_paths(paths=_ignored(folder, source))
        config.set_hashing_config(hashing_config)
        config.verify(folder, source)
    except Exception as error:  # ValueError for mismatches, cryptography / sigstore errors for bad signatures
        message = _mismatch_message(str(error)) or type(error).__name__
        raise SignatureError("SignatureInvalid", f"{source.name} does not verify {folder.name}: {message}") from None
    facts = _facts(statement, method, signer)
    if serialization.get("method", "files") == "files":
        unsigned = [name for name in listed_files(folder) if name not in facts.files]
        if unsigned:
            raise SignatureError(
                "SignatureInvalid", f"{source.name} does not cover {', '.join(sorted(unsigned)[:5])}"
            )
    return facts


def _fingerprint_of_file(path: pathlib.Path) -> str:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as error:
        raise SignatureError("SignatureInvalid", f"the public key is not a PEM public key ({error})") from None
    return key_fingerprint(key)


def check_private_key(path: pathlib.Path) -> None:
    """Fail fast, before any GPU time is spent, when the signing key is not a readable EC private key (the
    message names the file, never its content)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise SignatureError("SigningKeyUnavailable", f"signing key {path}: {error.strerror or error}") from None
    except (ValueError, TypeError) as error:
        raise SignatureError("SigningKeyInvalid", f"signing key {path} is not a PEM private key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError("SigningKeyInvalid", f"signing key {path} is not an elliptic-curve key")
