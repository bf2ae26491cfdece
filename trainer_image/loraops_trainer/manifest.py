"""`loraops-manifest.json` and the digest rule.

The digest rule, which needs nothing but the files (so a PEFT folder trained elsewhere gets its digest the same
way, and the agent can check a download without trusting the manifest):

1. Take every regular file under the directory, recursively, except `loraops-manifest.json` and `model.sig`
   (the OpenSSF model signature, see `signing.py`) at the top and anything whose path has a component
   starting with `.` (checkpoints, staging, editor files). The signature is left out so that signing a folder
   (at training time, or later in CI) never changes the digest a LoraAdapter pins.
2. For each, the line `<sha256 hex of the bytes>  <path relative to the directory, '/'-separated>\\n` (the
   format of `sha256sum`).
3. Sort the lines by path (bytewise on UTF-8) and take the sha256 of their concatenation: 64 hex characters.

In a shell: `cd DIR && find . -type f ! -path '*/.*' ! -path ./loraops-manifest.json ! -path ./model.sig |
sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import pathlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .errors import ConfigError, IntegrityError
from .storage import MANIFEST_NAME

SCHEMA_VERSION = 1
CHUNK = 1 << 20
SIGNATURE_NAME = "model.sig"
"""The signature file (signing.SIGNATURE_FILE): outside the digest rule, like the manifest."""
UNLISTED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def listed_files(root: pathlib.Path) -> list[str]:
    """Relative paths covered by the digest rule, sorted bytewise."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith("."):
                continue
            relative = pathlib.Path(dirpath, filename).relative_to(root).as_posix()
            if relative in UNLISTED:
                continue
            if pathlib.Path(dirpath, filename).is_file():
                names.append(relative)
    return sorted(names, key=lambda name: name.encode())


def digest_of(entries: dict[str, str]) -> str:
    """The digest of {relative path: sha256 hex}."""
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(entries.items(), key=lambda kv: kv[0].encode()))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class FileEntry:
    name: str
    sha256: str
    size: int


def hash_directory(root: pathlib.Path) -> tuple[str, list[FileEntry]]:
    """(digest, file entries) of a directory by the digest rule."""
    entries = []
    for name in listed_files(root):
        path = root / name
        entries.append(FileEntry(name=name, sha256=file_sha256(path), size=path.stat().st_size))
    return digest_of({entry.name: entry.sha256 for entry in entries}), entries


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("loraops", "torch", "transformers", "peft", "bitsandbytes", "safetensors", "accelerate"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _without_none(value: Any) -> Any:
    """Unknown facts are left out rather than written as null, so readers test presence only."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    return value


def build_manifest(root: pathlib.Path, *, kind: str, merge_state: str, **sections: Any) -> dict[str, Any]:
    """The manifest for the files now in `root`; sections with None values are left out."""
    digest, entries = hash_directory(root)
    manifest: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "kind": kind,
        "createdAt": now_rfc3339(),
        "mergeState": merge_state,
    }
    manifest.update(_without_none(sections))
    manifest["files"] = {entry.name: {"sha256": entry.sha256, "size": entry.size} for entry in entries}
    manifest["digest"] = digest
    manifest["libraries"] = library_versions()
    return manifest


def write_manifest(root: pathlib.Path, manifest: dict[str, Any]) -> pathlib.Path:
    path = root / MANIFEST_NAME
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(root: pathlib.Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError("InvalidManifest", f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError("InvalidManifest", f"{path}: not a JSON object")
    return data


def normalise_digest(value: str) -> str:
    value = value.strip().lower().removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError("InvalidDigest", f"{value!r} is not a sha256 hex digest")
    return value


@dataclass
class Verification:
    """The outcome of `verify`: ok only when every check passed."""

    directory: str
    digest: str
    manifest_digest: str | None
    expected_digest: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self, label: str) -> None:
        """IntegrityError `DigestMismatch` naming `label` and every problem, unless all checks passed."""
        if self.problems:
            raise IntegrityError("DigestMismatch", f"{label}: " + "; ".join(self.problems))

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": "verify",
            "ok": self.ok,
            "directory": self.directory,
            "digest": self.digest,
            "manifest_digest": self.manifest_digest,
            "expected_digest": self.expected_digest,
            "problems": self.problems,
        }


def verify_directory(root: pathlib.Path, expected_digest: str | None = None) -> Verification:
    """Check `root` against its manifest (when present) and against `expected_digest` (when given)."""
    if not root.is_dir():
        raise ConfigError("NotFound", f"{root}: no such directory")
    expected = normalise_digest(expected_digest) if expected_digest else None
    manifest = read_manifest(root)
    if manifest is None and expected is None:
        raise ConfigError("NothingToVerify", f"{root} has no {MANIFEST_NAME}; pass --digest to check it by the rule")
    digest, entries = hash_directory(root)
    result = Verification(
        directory=str(root),
        digest=digest,
        manifest_digest=manifest.get("digest") if manifest else None,
        expected_digest=expected,
    )
    if manifest is not None:
        listed = manifest.get("files")
        if not isinstance(listed, dict):
            result.problems.append("manifest has no 'files' object")
            listed = {}
        actual = {entry.name: entry for entry in entries}
        for name, info in sorted(listed.items()):
            entry = actual.get(name)
            if entry is None:
                result.problems.append(f"missing file {name!r}")
                continue
            if not isinstance(info, dict) or entry.sha256 != info.get("sha256"):
                result.problems.append(f"sha256 mismatch for {name!r}")
            elif entry.size != info.get("size"):
                result.problems.append(f"size mismatch for {name!r}")
        for name in sorted(set(actual) - set(listed)):
            result.problems.append(f"unexpected file {name!r} (not in the manifest)")
        declared = {name: info.get("sha256", "") for name, info in listed.items() if isinstance(info, dict)}
        if manifest.get("digest") != digest_of(declared):
            result.problems.append("manifest digest does not match the manifest's own file list")
        if manifest.get("digest") != digest:
            result.problems.append(f"digest of the files {digest} != manifest digest {manifest.get('digest')}")
    if expected is not None and expected != digest:
        result.problems.append(f"digest of the files {digest} != expected {expected}")
    return result
