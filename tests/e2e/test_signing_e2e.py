"""e2e: the trainer signs what it publishes, the agent verifies the signature before the load, and the real
vLLM CPU server serves the verified adapter by name; a tampered copy (digest re-pinned) never reaches vLLM."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from loraops.agent.client import AgentClient, AgentError
from loraops.agent.config import AgentConfig
from loraops.agent.models import SignatureCheck
from loraops.agent.server import build_app
from loraops.agent.service import Agent
from loraops_trainer.manifest import build_manifest, hash_directory, write_manifest
from loraops_trainer.signing import SIGNATURE_FILE
from loraops_trainer.testing import capital_rows, train_config, write_jsonl
from tests.signing_support import KeyPair, assert_no_key_material, make_keypair

pytestmark = [pytest.mark.e2e, pytest.mark.adapters, pytest.mark.asyncio]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_keypair(tmp_path_factory.mktemp("e2e-keys"))


@pytest.fixture(scope="module")
def trained(tiny_model: pathlib.Path, keys: KeyPair, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real trainer program, signing with a key file (as the operator mounts it): its result event."""
    root = tmp_path_factory.mktemp("e2e-signed")
    data = write_jsonl(root / "capitals.jsonl", capital_rows("completion", 64))
    config = train_config(
        tiny_model,
        data,
        root / "adapter",
        max_steps=8,
        lora={"targetModules": ["q_proj", "v_proj"]},
        signing={"keyPath": str(keys.private)},
    )
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    process = subprocess.run(
        [sys.executable, "-m", "loraops_trainer", "train", "--config", str(root / "config.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert_no_key_material("trainer stdout", process.stdout, keys)
    assert_no_key_material("trainer stderr", process.stderr, keys)
    result = [json.loads(line) for line in process.stdout.splitlines() if line.strip()][-1]
    assert result["event"] == "result" and result["signature_digest"]
    return {"folder": root / "adapter", **result}


@pytest_asyncio.fixture
async def agent(vllm_server: Any, tmp_path: pathlib.Path) -> AsyncIterator[tuple[Agent, AgentClient]]:
    config = AgentConfig(adapters_dir=tmp_path / "adapters", vllm_url=vllm_server.url, require_signed=True)
    instance = Agent(config)
    server = TestServer(build_app(instance, watch=False), host="127.0.0.1")
    await server.start_server()
    client = AgentClient(str(server.make_url("")).rstrip("/"))
    try:
        yield instance, client
    finally:
        for record in await client.list():  # leave the shared vLLM as the session found it
            await client.delete(record.name)
        await client.close()
        await server.close()


async def test_trainer_signs_agent_verifies_vllm_serves(
    trained: dict[str, Any], keys: KeyPair, agent: tuple[Agent, AgentClient], vllm_server: Any
) -> None:
    _, client = agent
    folder: pathlib.Path = trained["folder"]
    assert (folder / SIGNATURE_FILE).is_file()
    check = SignatureCheck(kind="publicKey", pem=keys.public_pem)
    record = await client.put("capitals-signed", folder.as_uri(), trained["digest"], signature=check)
    assert record.state == "Loaded"
    assert record.signature_digest == trained["signature_digest"] and record.signer.startswith("key sha256:")
    # vLLM answers by the served name (an unknown name is a 404): the verified adapter serves.
    answer = vllm_server.complete("capitals-signed", "The capital of France is", max_tokens=4)
    assert answer["model"] == "capitals-signed" and len(answer["choices"]) == 1
    assert "capitals-signed" in vllm_server.models()
    assert_no_key_material("agent record", record.wire(), keys)


async def test_a_tampered_signed_adapter_never_reaches_vllm(
    trained: dict[str, Any], keys: KeyPair, agent: tuple[Agent, AgentClient], vllm_server: Any, tmp_path: pathlib.Path
) -> None:
    _, client = agent
    copy = pathlib.Path(shutil.copytree(trained["folder"], tmp_path / "tampered"))
    config = json.loads((copy / "adapter_config.json").read_text())
    config["lora_alpha"] = config["lora_alpha"] * 4  # same tensors, four times the effect
    (copy / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    write_manifest(copy, build_manifest(copy, kind="adapter", merge_state="unmerged"))
    digest, _ = hash_directory(copy)
    check = SignatureCheck(kind="publicKey", pem=keys.public_pem)
    with pytest.raises(AgentError) as caught:
        await client.put("capitals-tampered", copy.as_uri(), digest, signature=check)
    assert caught.value.reason == "SignatureInvalid" and "adapter_config.json" in caught.value.message
    with pytest.raises(AgentError) as unsigned:
        await client.put("capitals-unchecked", copy.as_uri(), digest)
    assert unsigned.value.reason == "SignatureMissing"
    served = vllm_server.models()
    assert "capitals-tampered" not in served and "capitals-unchecked" not in served
