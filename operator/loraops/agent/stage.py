"""Download → check → verify → install: the path of an artifact from its store to a folder vLLM may load.

Everything happens in a hidden staging folder inside the adapters folder; only a fully verified tree is
renamed into place (atomic on one filesystem), and every failure removes the staging folder, so vLLM can
only ever be pointed at bytes that matched the requested digest.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from loraops.agent import formats
from loraops.agent.config import AgentConfig
from loraops.agent.errors import AgentFailure, ArtifactRejected, BadRequest
from loraops.agent.models import SignatureCheck
from loraops.agent.safety import Budget, check_tree, safe_relative
from loraops.agent.sources import FetchRequest, source_for
from loraops_trainer import signing
from loraops_trainer.errors import TrainerError
from loraops_trainer.manifest import hash_directory, verify_directory
from loraops_trainer.storage import MANIFEST_NAME

STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class Signed:
    """A signature verified before the load."""

    signer: str
    subject_digest: str


@dataclass(frozen=True)
class Verified:
    digest: str
    files: int
    size: int
    installed_digest: str | None = None
    """The folder's digest after a pickle conversion changed its files (None: unchanged, equal to `digest`);
    what re-verification before a reload must find."""
    converted_from: str | None = None
    signed: Signed | None = None


def new_staging(config: AgentConfig) -> pathlib.Path:
    config.adapters_dir.mkdir(parents=True, exist_ok=True)
    path = config.adapters_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    path.mkdir()
    return path


def clean_staging(config: AgentConfig) -> int:
    """Remove staging folders a crashed agent left behind; returns how many."""
    removed = 0
    if config.adapters_dir.is_dir():
        for path in config.adapters_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def download(config: AgentConfig, uri: str, staging: pathlib.Path, credentials: Mapping[str, str]) -> None:
    budget = Budget(max_bytes=config.max_bytes, max_files=config.max_files)
    source_for(uri, config).fetch(FetchRequest(uri=uri, target=staging, budget=budget, credentials=credentials))


def check_manifest_names(root: pathlib.Path, max_files: int) -> None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ArtifactRejected("InvalidManifest", f"{MANIFEST_NAME} is not readable JSON ({error})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ArtifactRejected("InvalidManifest", f"{MANIFEST_NAME} has no 'files' object")
    if len(files) > max_files:
        raise ArtifactRejected("TooManyFiles", f"{MANIFEST_NAME} lists {len(files)} files, the limit is {max_files}")
    for name in files:
        safe_relative(name)
        if (root / name).is_symlink():
            raise ArtifactRejected("Symlink", f"{name!r} listed in {MANIFEST_NAME} is a symlink")


def verify_signature(root: pathlib.Path, check: SignatureCheck, config: AgentConfig) -> Signed:
    """The folder against its `model.sig` with the trust root the request names (OpenSSF model signing).

    Runs on bytes that already matched the digest and before any conversion: a signature speaks for the files
    as their signer wrote them. Raises ArtifactRejected `SignatureMissing` / `SignatureInvalid`."""
    with tempfile.TemporaryDirectory(prefix="loraops-trust-") as scratch:
        trust: pathlib.Path | None = None
        if check.kind != "sigstore":
            if check.pem is not None:
                trust = pathlib.Path(scratch, "trust.pem")
                trust.write_text(check.pem, encoding="utf-8")
            else:
                assert check.secret is not None
                if config.credentials_dir is None:
                    raise BadRequest(
                        "CredentialsUnavailable",
                        f"secret {check.secret!r} named, but this agent has no credentials folder",
                    )
                trust = config.credentials_dir / check.secret / check.key
                if not trust.is_file():
                    raise AgentFailure(
                        "CredentialsUnavailable",
                        f"key {check.key!r} of secret {check.secret!r} is not mounted",
                        status=422,
                    )
        try:
            facts = signing.verify_folder(
                root,
                public_key=trust if check.kind == "publicKey" else None,
                certificate_chain=[trust] if check.kind == "certificateChain" and trust else (),
                sigstore_identity=check.identity,
                sigstore_issuer=check.issuer,
            )
        except TrainerError as error:
            raise ArtifactRejected(error.reason, error.message) from None
    return Signed(signer=facts.signer, subject_digest=facts.subject_digest)


def verify(
    root: pathlib.Path,
    digest: str,
    config: AgentConfig,
    *,
    convert_pickle: bool = False,
    signature: SignatureCheck | None = None,
) -> Verified:
    """Every file against the manifest (when there is one) and the folder against `digest`; then the signature
    (when asked for); then no pickle.

    Pickle files are refused before hashing (cheap, and the answer does not depend on the digest); with the
    opt-in, only bytes that matched the digest (and the signature) are converted.
    """
    files, size = check_tree(root, config.max_files, config.max_bytes)
    check_manifest_names(root, config.max_files)
    pickles = formats.check_formats(root, convert_pickle)
    try:
        result = verify_directory(root, digest)
    except TrainerError as error:
        raise ArtifactRejected(error.reason, error.message) from None
    if not result.ok:
        raise ArtifactRejected("DigestMismatch", "; ".join(result.problems[:5]))
    signed = verify_signature(root, signature, config) if signature is not None else None
    if not pickles:
        return Verified(digest=result.digest, files=files, size=size, signed=signed)
    conversion = formats.convert(root, pickles, config.converter_python)
    files, size = check_tree(root, config.max_files, config.max_bytes)
    installed, _ = hash_directory(root)
    return Verified(
        digest=result.digest,
        files=files,
        size=size,
        installed_digest=installed,
        converted_from=conversion.source,
        signed=signed,
    )


def verify_installed(root: pathlib.Path, digest: str, config: AgentConfig) -> None:
    """Re-check an installed folder before it is loaded again (the shared volume is writable by vLLM's pod)."""
    if not root.is_dir():
        raise ArtifactRejected("ArtifactMissing", f"{root} is gone")
    check_tree(root, config.max_files, config.max_bytes)
    found, _ = hash_directory(root)
    if found != digest:
        raise ArtifactRejected("DigestMismatch", f"installed files now hash to {found}, expected {digest}")


def install(staging: pathlib.Path, final: pathlib.Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        # Left by an earlier life of this agent: the staged copy was just verified, the old one was not.
        shutil.rmtree(final)
    staging.rename(final)


def remove(path: pathlib.Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)


def read_credentials(config: AgentConfig, secret: str | None) -> dict[str, str]:
    """The keys of a Secret mounted at `<credentials_dir>/<secret>/`: values stay in memory, never logged."""
    if secret is None:
        return {}
    if config.credentials_dir is None:
        raise BadRequest("CredentialsUnavailable", f"secret {secret!r} named, but this agent has no credentials folder")
    folder = config.credentials_dir / secret
    if not folder.is_dir():
        raise AgentFailure("CredentialsUnavailable", f"secret {secret!r} is not mounted in this pod", status=422)
    values: dict[str, str] = {}
    # Kubernetes mounts each key as a symlink into `..data/`; hidden entries are its bookkeeping.
    for entry in folder.iterdir():
        if not entry.name.startswith(".") and entry.is_file():
            values[entry.name] = entry.read_text(encoding="utf-8").strip()
    return values
