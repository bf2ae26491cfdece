"""`s3://<bucket>/<prefix>`: every object under the prefix (any S3-compatible store).

The endpoint and credentials come from the Secret a PUT names (mounted as files) or else from the pod's
environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …, or a pod identity), never from the request itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from loraops.agent.config import AgentConfig
from loraops.agent.errors import ArtifactRejected, BadRequest, SourceUnavailable
from loraops.agent.safety import is_hidden, safe_relative
from loraops.agent.sources import FetchRequest
from loraops_trainer.storage import parse_s3

CHUNK = 1 << 20
MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


def make_client(credentials: Mapping[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    def setting(key: str) -> str | None:
        return credentials.get(key) or os.environ.get(key) or None

    options: dict[str, Any] = {
        "endpoint_url": setting("AWS_ENDPOINT_URL"),
        "region_name": setting("AWS_REGION") or setting("AWS_DEFAULT_REGION"),
        "config": Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}),
    }
    # Keys from a named Secret override the environment; without them boto3's own chain applies (env, IRSA).
    if credentials.get("AWS_ACCESS_KEY_ID"):
        options["aws_access_key_id"] = credentials["AWS_ACCESS_KEY_ID"]
        options["aws_secret_access_key"] = credentials.get("AWS_SECRET_ACCESS_KEY")
        options["aws_session_token"] = credentials.get("AWS_SESSION_TOKEN")
    # A fresh session per fetch: boto3's default session caches the first credentials it resolved, which would
    # outlive a rotated Secret or environment.
    return boto3.session.Session().client("s3", **options)


def _translate(error: Exception, uri: str) -> Exception:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return ArtifactRejected("MissingCredentials", f"{uri}: no S3 credentials")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in MISSING:
            return ArtifactRejected("SourceNotFound", f"{uri}: not found ({code})")
        if code in DENIED:
            return ArtifactRejected("AccessDenied", f"{uri}: access denied ({code})")
        return SourceUnavailable("StorageError", f"{uri}: S3 error {code}")
    return SourceUnavailable("StorageUnavailable", f"{uri}: {type(error).__name__}: {error}")


def _objects(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], int(item.get("Size", 0))


class S3Source:
    scheme = "s3"

    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    def fetch(self, request: FetchRequest) -> None:
        try:
            url = parse_s3(request.uri)
        except Exception as error:
            raise BadRequest("InvalidUri", f"{request.uri!r}: {error}") from None
        prefix = url.key.strip("/") + "/" if url.key.strip("/") else ""
        budget = request.budget
        try:
            client = make_client(request.credentials)
            wanted: list[tuple[str, str]] = []
            declared = 0
            for key, size in _objects(client, url.bucket, prefix):
                relative = key[len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue  # folder markers some tools write
                relative_path = safe_relative(relative)
                if is_hidden(relative_path):
                    continue
                wanted.append((key, relative_path.as_posix()))
                declared += size
                # Refuse on the listing, before a byte is fetched; the stream below is charged again, since a
                # listing can be stale or lie.
                if len(wanted) > budget.max_files:
                    raise ArtifactRejected("TooManyFiles", f"{request.uri}: more than {budget.max_files} files")
                if declared > budget.max_bytes:
                    raise ArtifactRejected("TooLarge", f"{request.uri}: more than {budget.max_bytes} bytes")
            if not wanted:
                raise ArtifactRejected("SourceNotFound", f"{request.uri}: no objects under this prefix")
            for key, name in wanted:
                budget.add_file(name)
                destination = request.target / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                body = client.get_object(Bucket=url.bucket, Key=key)["Body"]
                with destination.open("xb") as writer:
                    for chunk in body.iter_chunks(CHUNK):
                        budget.add_bytes(len(chunk), name)
                        writer.write(chunk)
        except (ArtifactRejected, BadRequest, SourceUnavailable):
            raise
        except Exception as error:
            raise _translate(error, request.uri) from None
