"""The s3:// source against a real S3-compatible server (moto's, on loopback)."""

from __future__ import annotations

import pathlib
from typing import Any

import boto3
import pytest

from loraops.agent.client import AgentError

pytestmark = [pytest.mark.adapters, pytest.mark.asyncio]

KEYS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(moto_s3_endpoint: str) -> str:
    return moto_s3_endpoint


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """No AWS settings from the machine: each test says where credentials come from."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bucket(s3_endpoint: str, isolated_env: None, request: pytest.FixtureRequest) -> tuple[Any, str]:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    name = f"adapters-{request.node.name.lower().replace('_', '-')[:40]}"
    client.create_bucket(Bucket=name)
    return client, name


def upload(client: Any, bucket: str, folder: pathlib.Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())


def secret_dir(root: pathlib.Path, name: str, values: dict[str, str]) -> pathlib.Path:
    folder = root / name
    folder.mkdir(parents=True)
    for key, value in values.items():
        (folder / key).write_text(value + "\n")
    return root


async def test_s3_adapter_with_credentials_from_a_mounted_secret(
    start_agent, fake_vllm, bucket, s3_endpoint, new_adapter, tmp_path
) -> None:
    client, name = bucket
    folder, digest = new_adapter(tmp_path / "src")
    upload(client, name, folder, "team-a/support/v1")
    client.put_object(Bucket=name, Key="team-a/support/v1/.checkpoints/step-10/optimizer.pt", Body=b"x" * 100)
    creds = secret_dir(tmp_path / "secrets", "s3-reader", {**KEYS, "AWS_ENDPOINT_URL": s3_endpoint})
    running = await start_agent(credentials_dir=creds)

    record = await running.client.put(
        "support", f"s3://{name}/team-a/support/v1/", digest, credentials_secret="s3-reader"
    )
    assert (record.state, record.digest, record.credentials_secret) == ("Loaded", digest, "s3-reader")
    installed = pathlib.Path(str(record.path))
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert fake_vllm.adapters == {"support": str(installed)}
    listing = str([r.model_dump() for r in await running.client.list()])
    assert KEYS["AWS_SECRET_ACCESS_KEY"] not in listing and KEYS["AWS_ACCESS_KEY_ID"] not in listing


async def test_s3_with_credentials_from_the_environment(
    start_agent, fake_vllm, bucket, s3_endpoint, new_adapter, tmp_path, monkeypatch
) -> None:
    client, name = bucket
    folder, digest = new_adapter(tmp_path / "src", manifest=False)
    upload(client, name, folder, "plain")
    for key, value in {**KEYS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    running = await start_agent()
    assert (await running.client.put("plain", f"s3://{name}/plain", digest)).state == "Loaded"


async def test_s3_failures_are_refused_with_reasons_and_leave_nothing(
    start_agent, fake_vllm, bucket, s3_endpoint, new_adapter, tmp_path, list_tree, monkeypatch
) -> None:
    client, name = bucket
    folder, digest = new_adapter(tmp_path / "src", weights_size=8192)
    upload(client, name, folder, "good")
    upload(client, name, folder, "evil")
    client.put_object(Bucket=name, Key="evil/../escaped.bin", Body=b"outside")
    creds = secret_dir(tmp_path / "secrets", "s3-reader", {**KEYS, "AWS_ENDPOINT_URL": s3_endpoint})
    running = await start_agent(credentials_dir=creds, max_bytes=64 * 1024)

    async def refused(uri: str, secret: str | None = "s3-reader", **kw: Any) -> tuple[int, str]:
        with pytest.raises(AgentError) as error:
            await running.client.put("x", uri, digest, credentials_secret=secret, **kw)
        return error.value.status, error.value.reason

    assert await refused(f"s3://{name}/missing/prefix") == (422, "SourceNotFound")
    assert await refused(f"s3://no-such-bucket-{name}/x") == (422, "SourceNotFound")
    assert await refused(f"s3://{name}/evil") == (422, "UnsafePath")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # the store is known, the keys are not
    assert await refused(f"s3://{name}/good", secret=None) == (422, "MissingCredentials")
    assert await refused(f"s3://{name}/good", secret="not-mounted") == (422, "CredentialsUnavailable")
    small = await start_agent(credentials_dir=creds, max_bytes=1024, adapters_dir=tmp_path / "small")
    with pytest.raises(AgentError) as too_large:
        await small.client.put("x", f"s3://{name}/good", digest, credentials_secret="s3-reader")
    assert (too_large.value.status, too_large.value.reason) == (422, "TooLarge")
    assert fake_vllm.loads() == []
    assert list_tree(running.config.adapters_dir) == [] and list_tree(tmp_path / "small") == []
