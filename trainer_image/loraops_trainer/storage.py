"""Where inputs come from and outputs go: local or mounted paths, `file://`, `pvc://` and `s3://`.

`pvc://claim/path` names a PersistentVolumeClaim that the Job mounts at `$LORAOPS_PVC_ROOT/claim`
(default `/mnt/pvc/claim`): the operator and the trainer share that convention, so a URI in a spec means the
same file inside the pod. S3 credentials come only from the environment (the standard AWS variables, which the
operator fills from the referenced Secret, or a pod identity); they are never part of the config.

An output location holds the adapter files at its top, `loraops-manifest.json` written last (a reader takes the
adapter as finished only once the manifest exists), and hidden entries that are not part of the adapter:
`.checkpoints/step-N/` while training and `.staging-*` while publishing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ConfigError, RuntimeFailure

MANIFEST_NAME = "loraops-manifest.json"
CHECKPOINTS_DIR = ".checkpoints"
CHECKPOINT_MARKER = "checkpoint.json"
"""Written last into a checkpoint: a checkpoint without it is incomplete and ignored."""


def pvc_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LORAOPS_PVC_ROOT", "/mnt/pvc"))


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    def child(self, name: str) -> S3Url:
        prefix = self.key.rstrip("/")
        return S3Url(self.bucket, f"{prefix}/{name}" if prefix else name)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3(uri: str) -> S3Url:
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError("InvalidUri", f"{uri}: an s3:// URI needs a bucket")
    return S3Url(bucket, key)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> pathlib.Path:
    """The filesystem path of a local, `file://` or `pvc://` URI."""
    if uri.startswith("file://"):
        return pathlib.Path(uri.removeprefix("file://"))
    if uri.startswith("pvc://"):
        claim_and_path = uri.removeprefix("pvc://")
        claim, _, rest = claim_and_path.partition("/")
        if not claim:
            raise ConfigError("InvalidUri", f"{uri}: a pvc:// URI needs a claim name")
        return pvc_root() / claim / rest
    if "://" in uri:
        raise ConfigError("InvalidUri", f"{uri}: unsupported scheme (use s3://, pvc://, file:// or a local path)")
    return pathlib.Path(uri)


def s3_client() -> Any:
    """A boto3 S3 client configured only from the environment (`AWS_*`, including `AWS_ENDPOINT_URL`)."""
    try:
        import boto3
    except ImportError:  # pragma: no cover - boto3 is in the trainer extra
        raise ConfigError("MissingDependency", "s3:// needs boto3 (pip install 'loraops[trainer]')") from None
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _s3_error(error: Exception, what: str, reason_missing: str) -> Exception:
    """Sort S3 failures: missing objects and denied access are input errors, the rest may pass on retry."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return ConfigError("MissingCredentials", f"{what}: no S3 credentials in the environment ({error})")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}:
            return ConfigError(reason_missing, f"{what}: not found ({code})")
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}:
            return ConfigError("AccessDenied", f"{what}: access denied ({code})")
        return RuntimeFailure("StorageError", f"{what}: {error}")
    return RuntimeFailure("StorageError", f"{what}: {error}")


def fetch_file(uri: str, workdir: pathlib.Path, *, reason_missing: str = "NotFound") -> pathlib.Path:
    """A local path holding the file at `uri` (downloaded into `workdir` for s3://)."""
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_file():
            raise ConfigError(reason_missing, f"{uri}: no such file" if not path.exists() else f"{uri}: not a file")
        if not os.access(path, os.R_OK):
            raise ConfigError(reason_missing, f"{uri}: not readable")
        return path
    url = parse_s3(uri)
    target = workdir / f"download-{uuid.uuid4().hex}-{pathlib.PurePosixPath(url.key).name or 'object'}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client().download_file(url.bucket, url.key, str(target))
    except Exception as error:
        raise _s3_error(error, uri, reason_missing) from None
    return target


def fetch_dir(uri: str, workdir: pathlib.Path, *, reason_missing: str = "NotFound") -> pathlib.Path:
    """A local directory holding the tree at `uri` (every object under the prefix for s3://)."""
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise ConfigError(reason_missing, f"{uri}: no such directory")
        return path
    url = parse_s3(uri)
    target = workdir / f"download-{uuid.uuid4().hex}"
    prefix = url.key.rstrip("/") + "/" if url.key else ""
    client = s3_client()
    found = 0
    try:
        for key in _s3_keys(client, url.bucket, prefix):
            relative = key[len(prefix) :]
            if not relative or relative.endswith("/"):
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(url.bucket, key, str(destination))
            found += 1
    except ConfigError:
        raise
    except Exception as error:
        raise _s3_error(error, uri, reason_missing) from None
    if not found:
        raise ConfigError(reason_missing, f"{uri}: no objects under this prefix")
    return target


def _s3_keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"]


def _checkpoint_step(name: str) -> int | None:
    if not name.startswith("step-"):
        return None
    digits = name.removeprefix("step-")
    return int(digits) if digits.isdigit() else None


class OutputStore(Protocol):
    """The output location's operations; only rank 0 calls the writing ones."""

    uri: str

    def probe_writable(self) -> None: ...
    def read_manifest(self) -> dict[str, Any] | None: ...
    def checkpoint_steps(self) -> list[int]: ...
    def fetch_checkpoint(self, step: int, workdir: pathlib.Path) -> pathlib.Path: ...
    def publish_checkpoint(self, local_dir: pathlib.Path, step: int) -> None: ...
    def staging_dir(self, kind: str) -> pathlib.Path: ...
    def prune_checkpoints(self, keep_last: int) -> None: ...
    def remove_checkpoints(self) -> None: ...
    def publish_adapter(self, local_dir: pathlib.Path) -> None: ...


class LocalStore:
    """An output directory on a local or mounted filesystem. Renames within one filesystem are atomic, so
    a checkpoint directory appears whole or not at all."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = local_path(uri)

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.root / CHECKPOINTS_DIR

    def probe_writable(self) -> None:
        probe = self.root / f".write-probe-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise ConfigError("OutputNotWritable", f"{self.uri}: cannot write ({error.strerror or error})") from None

    def read_manifest(self) -> dict[str, Any] | None:
        import json

        path = self.root / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for entry in self.checkpoints.iterdir():
            step = _checkpoint_step(entry.name)
            if step is not None and (entry / CHECKPOINT_MARKER).is_file():
                steps.append(step)
        return sorted(steps)

    def fetch_checkpoint(self, step: int, workdir: pathlib.Path) -> pathlib.Path:
        return self.checkpoints / f"step-{step}"

    def publish_checkpoint(self, local_dir: pathlib.Path, step: int) -> None:
        # local_dir was staged inside .checkpoints (see staging_dir), so this rename is atomic.
        final = self.checkpoints / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(local_dir, final)

    def staging_dir(self, kind: str) -> pathlib.Path:
        """A fresh hidden directory on the output's own filesystem, so that publishing is a rename."""
        base = self.checkpoints if kind == "checkpoint" else self.root
        path = base / f".staging-{kind}-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def prune_checkpoints(self, keep_last: int) -> None:
        for step in self.checkpoint_steps()[:-keep_last]:
            shutil.rmtree(self.checkpoints / f"step-{step}", ignore_errors=True)
        if self.checkpoints.is_dir():
            for entry in self.checkpoints.iterdir():
                if entry.name.startswith(".staging-"):
                    shutil.rmtree(entry, ignore_errors=True)

    def remove_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    def publish_adapter(self, local_dir: pathlib.Path) -> None:
        _make_readable(local_dir)
        manifest = local_dir / MANIFEST_NAME
        files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p != manifest)
        stale = self.root / MANIFEST_NAME
        # The old manifest goes first: between here and the end the folder is "unfinished", never "finished
        # with mixed files".
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
        for path in files:
            target = self.root / path.relative_to(local_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        _fsync_dir(self.root)
        os.replace(manifest, self.root / MANIFEST_NAME)
        _fsync_dir(self.root)
        shutil.rmtree(local_dir, ignore_errors=True)


def _make_readable(directory: pathlib.Path) -> None:
    """safetensors writes 0600 files; the agent (another user, e.g. on a shared volume) must read them."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o644)


def _fsync_dir(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class S3Store:
    """An output prefix in S3. Objects appear one by one, so completeness is marked by a file written last:
    `checkpoint.json` for a checkpoint, the manifest for the adapter."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.url = parse_s3(uri)
        self._client: Any = None
        self._fetched: dict[int, pathlib.Path] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise _s3_error(error, what, "OutputNotWritable") from None

    def probe_writable(self) -> None:
        probe = self.url.child(f".write-probe-{uuid.uuid4().hex}")
        try:
            self.client.put_object(Bucket=probe.bucket, Key=probe.key, Body=b"")
            self.client.delete_object(Bucket=probe.bucket, Key=probe.key)
        except Exception as error:
            failure = _s3_error(error, self.uri, "OutputNotWritable")
            if isinstance(failure, ConfigError):
                raise ConfigError("OutputNotWritable", failure.message) from None
            raise failure from None

    def read_manifest(self) -> dict[str, Any] | None:
        import json

        from botocore.exceptions import ClientError

        key = self.url.child(MANIFEST_NAME)
        try:
            body = self.client.get_object(Bucket=key.bucket, Key=key.key)["Body"].read()
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise _s3_error(error, str(key), "OutputNotWritable") from None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _checkpoint_prefix(self) -> str:
        return self.url.child(CHECKPOINTS_DIR).key + "/"

    def checkpoint_steps(self) -> list[int]:
        prefix = self._checkpoint_prefix()
        keys = self._call(self.uri, lambda: list(_s3_keys(self.client, self.url.bucket, prefix)))
        steps = set()
        for key in keys:
            parts = key[len(prefix) :].split("/")
            if len(parts) == 2 and parts[1] == CHECKPOINT_MARKER:
                step = _checkpoint_step(parts[0])
                if step is not None:
                    steps.add(step)
        return sorted(steps)

    def fetch_checkpoint(self, step: int, workdir: pathlib.Path) -> pathlib.Path:
        if step not in self._fetched:
            self._fetched[step] = fetch_dir(str(self.url.child(f"{CHECKPOINTS_DIR}/step-{step}")), workdir)
        return self._fetched[step]

    def _upload_tree(self, local_dir: pathlib.Path, prefix: S3Url, last: str) -> None:
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == last)
        for path in files:
            key = prefix.child(path.relative_to(local_dir).as_posix())
            self._call(str(key), self.client.upload_file, str(path), key.bucket, key.key)

    def staging_dir(self, kind: str) -> pathlib.Path:
        import tempfile

        return pathlib.Path(tempfile.mkdtemp(prefix=f"loraops-staging-{kind}-"))

    def publish_checkpoint(self, local_dir: pathlib.Path, step: int) -> None:
        self._upload_tree(local_dir, self.url.child(f"{CHECKPOINTS_DIR}/step-{step}"), CHECKPOINT_MARKER)
        shutil.rmtree(local_dir, ignore_errors=True)

    def _delete_prefix(self, prefix: str) -> None:
        keys = self._call(self.uri, lambda: list(_s3_keys(self.client, self.url.bucket, prefix)))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call(self.uri, self.client.delete_objects, Bucket=self.url.bucket, Delete={"Objects": batch})

    def prune_checkpoints(self, keep_last: int) -> None:
        for step in self.checkpoint_steps()[:-keep_last]:
            self._delete_prefix(self._checkpoint_prefix() + f"step-{step}/")

    def remove_checkpoints(self) -> None:
        self._delete_prefix(self._checkpoint_prefix())

    def publish_adapter(self, local_dir: pathlib.Path) -> None:
        stale = self.url.child(MANIFEST_NAME)
        self._call(str(stale), self.client.delete_object, Bucket=stale.bucket, Key=stale.key)
        self._upload_tree(local_dir, self.url, MANIFEST_NAME)
        shutil.rmtree(local_dir, ignore_errors=True)


def output_store(uri: str) -> LocalStore | S3Store:
    return S3Store(uri) if is_s3(uri) else LocalStore(uri)
