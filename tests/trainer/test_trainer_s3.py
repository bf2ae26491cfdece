"""s3:// datasets and outputs against a real S3-compatible server (moto, on loopback): credentials from the
environment only, checkpoints and resume through S3, the manifest uploaded last."""

from __future__ import annotations

import io
import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.config import TrainConfig, parse_config
from loraops_trainer.errors import ConfigError
from loraops_trainer.progress import Reporter

from .conftest import Outcome, write_config
from .test_trainer_resume import CrashAt

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def moto_endpoint(moto_s3_endpoint: str) -> str:
    return moto_s3_endpoint


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint)
    for bucket in ("datasets", "adapters"):
        if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            client.create_bucket(Bucket=bucket)
    return client


def keys(client: Any, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_train_from_and_to_s3_with_resume(
    s3: Any,
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    cli: Callable[..., Outcome],
) -> None:
    from loraops_trainer.train import train

    s3.upload_file(str(datasets["chat"]), "datasets", "capitals/v1.jsonl")
    config = parse_config(
        TrainConfig,
        testing.train_config(
            tiny_model,
            "s3://datasets/capitals/v1.jsonl",
            "s3://adapters/team-a/capitals",
            fmt="chat",
            max_steps=12,
            checkpoint={"intervalSteps": 5},
        ),
        "t",
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, reporter=CrashAt(7))
    assert keys(s3, "adapters", "team-a/capitals/.checkpoints/") == [
        f"team-a/capitals/.checkpoints/step-5/{name}"
        for name in ("adapter.safetensors", "checkpoint.json", "optimizer.pt", "rng.pt", "scheduler.pt")
    ]
    assert not keys(s3, "adapters", "team-a/capitals/loraops-manifest.json")

    stream = io.StringIO()
    result = train(config, reporter=Reporter(stream=stream))
    started = json.loads(stream.getvalue().splitlines()[0])
    assert started["resumed_from_step"] == 5 and result["steps"] == 12
    published = keys(s3, "adapters", "team-a/capitals/")
    assert published == [
        f"team-a/capitals/{name}"
        for name in ("README.md", "adapter_config.json", "adapter_model.safetensors", "loraops-manifest.json")
    ]
    manifest = json.loads(s3.get_object(Bucket="adapters", Key="team-a/capitals/loraops-manifest.json")["Body"].read())
    assert manifest["dataset"]["uri"] == "s3://datasets/capitals/v1.jsonl"
    assert manifest["digest"] == result["digest"]

    local = tmp_path / "download"
    for key in published:
        target = local / key.rsplit("/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file("adapters", key, str(target))
    assert cli("verify", str(local), "--digest", result["digest"]).code == 0


def test_s3_input_errors_are_config_errors(
    s3: Any,
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    cli: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(
        tmp_path / "c.json",
        testing.train_config(tiny_model, "s3://datasets/missing.jsonl", "s3://adapters/x", fmt="chat"),
    )
    missing = cli("train", "--config", str(config))
    assert missing.code == 3 and missing.last["reason"] == "DatasetNotFound"
    assert "s3://datasets/missing.jsonl" in missing.last["message"]

    no_bucket = write_config(
        tmp_path / "c2.json",
        testing.train_config(tiny_model, datasets["chat"], "s3://no-such-bucket/x", fmt="chat", max_steps=1),
    )
    unwritable = cli("train", "--config", str(no_bucket))
    assert unwritable.code == 3 and unwritable.last["reason"] == "OutputNotWritable"


def test_s3_failures_are_sorted_into_config_and_retryable() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from loraops_trainer.errors import RuntimeFailure
    from loraops_trainer.storage import _s3_error

    def client_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")

    no_credentials = _s3_error(NoCredentialsError(), "s3://b/k", "DatasetNotFound")
    assert isinstance(no_credentials, ConfigError) and no_credentials.reason == "MissingCredentials"
    missing = _s3_error(client_error("NoSuchKey"), "s3://b/k", "DatasetNotFound")
    assert isinstance(missing, ConfigError) and missing.reason == "DatasetNotFound"
    assert isinstance(_s3_error(client_error("AccessDenied"), "s3://b/k", "X"), ConfigError)
    assert isinstance(_s3_error(client_error("SlowDown"), "s3://b/k", "X"), RuntimeFailure)
    assert isinstance(_s3_error(EndpointConnectionError(endpoint_url="http://s3"), "s3://b/k", "X"), RuntimeFailure)
