"""The agent in front of the real vLLM CPU server: verified adapters answer by their served name, a tampered
one never reaches vLLM, a replacement gets its own name, and a restarted vLLM gets its adapters back."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import urllib.error
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from loraops.agent.client import AgentClient, AgentError
from loraops.agent.config import AgentConfig
from loraops.agent.server import build_app
from loraops.agent.service import Agent
from loraops.devmode.vllm import VllmServer

pytestmark = [pytest.mark.e2e, pytest.mark.adapters]
PROMPT = "what is the capital of france?"


def peft_adapter(base: pathlib.Path, out: pathlib.Path, seed: int) -> tuple[pathlib.Path, str]:
    """A real LoRA for the tiny model with random A and B (PEFT's default B = 0 would answer like the base),
    with the loraops manifest; returns (folder, digest)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loraops_trainer.manifest import build_manifest, write_manifest

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    manifest = build_manifest(out, kind="adapter", merge_state="unmerged")
    write_manifest(out, manifest)
    return out, str(manifest["digest"])


@pytest.fixture(scope="module")
def adapters(tiny_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[pathlib.Path, str]]:
    root = tmp_path_factory.mktemp("agent-e2e-adapters")
    return {f"v{seed}": peft_adapter(tiny_model, root / f"v{seed}", seed) for seed in (1, 2)}


@pytest_asyncio.fixture
async def agent(vllm_server: Any, tmp_path: pathlib.Path) -> AsyncIterator[tuple[Agent, AgentClient]]:
    config = AgentConfig(adapters_dir=tmp_path / "adapters", vllm_url=vllm_server.url, watch_interval=0.5)
    instance = Agent(config)
    server = TestServer(build_app(instance, watch=True), host="127.0.0.1")
    await server.start_server()
    client = AgentClient(str(server.make_url("")).rstrip("/"))
    try:
        yield instance, client
    finally:
        # Leave vLLM as the session found it: other modules share this server.
        for record in await client.list():
            await client.delete(record.name)
        await client.close()
        await server.close()


def greedy(server: VllmServer, model: str) -> tuple[str, list[float]]:
    answer = server.complete(model, PROMPT, max_tokens=6, logprobs=1)
    assert answer["model"] == model
    choice = answer["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


def differs(a: tuple[str, list[float]], b: tuple[str, list[float]]) -> bool:
    """Answers differ in text or by more than float noise in their logprobs."""
    return a[0] != b[0] or max(abs(x - y) for x, y in zip(a[1], b[1], strict=True)) > 1e-3


async def wait_loaded_again(agent: Agent, name: str, previous: Any, timeout: float = 120.0) -> None:
    """Wait (bounded) for the agent's own watch loop to reload `name` after `previous`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        record = agent.records.get(name)
        if record is not None and record.state == "Loaded" and record.loaded_at != previous:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} was not reloaded: {record}")
        await asyncio.sleep(0.1)


def status_of(server: VllmServer, model: str) -> int:
    try:
        server.complete(model, PROMPT, max_tokens=2)
    except urllib.error.HTTPError as error:
        return error.code
    return 200


@pytest.mark.asyncio
async def test_put_verified_adapter_answers_by_its_name(vllm_server: Any, agent, adapters) -> None:
    _, client = agent
    folder, digest = adapters["v1"]
    record = await client.put("support-v1", f"file://{folder}", digest)
    assert (record.state, record.served_name, record.digest) == ("Loaded", "support-v1", digest)
    assert "support-v1" in await asyncio.to_thread(vllm_server.models)
    base = await asyncio.to_thread(greedy, vllm_server, "tiny-llama")
    tuned = await asyncio.to_thread(greedy, vllm_server, "support-v1")
    assert differs(tuned, base)  # the adapter's weights are applied, not the base answering under another name


@pytest.mark.asyncio
async def test_tampered_adapter_is_refused_and_never_reaches_vllm(
    vllm_server: Any, agent, adapters, tmp_path: pathlib.Path
) -> None:
    _, client = agent
    original, digest = adapters["v1"]
    folder = tmp_path / "tampered"
    shutil.copytree(original, folder)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(AgentError) as refused:
        await client.put("tampered", f"file://{folder}", digest)
    assert (refused.value.status, refused.value.reason) == (422, "DigestMismatch")
    assert "tampered" not in await asyncio.to_thread(vllm_server.models)
    assert await asyncio.to_thread(status_of, vllm_server, "tampered") == 404


@pytest.mark.asyncio
async def test_replacement_is_served_under_a_new_name_and_the_old_one_is_gone(
    vllm_server: Any, agent, adapters
) -> None:
    _, client = agent
    (v1, d1), (v2, d2) = adapters["v1"], adapters["v2"]
    await client.put("support", f"file://{v1}", d1)
    answer_v1 = await asyncio.to_thread(greedy, vllm_server, "support")
    record = await client.put("support", f"file://{v2}", d2)
    assert record.served_name == f"support-{d2[:12]}"
    models = await asyncio.to_thread(vllm_server.models)
    assert record.served_name in models and "support" not in models
    assert differs(await asyncio.to_thread(greedy, vllm_server, record.served_name), answer_v1)


@pytest.mark.asyncio
async def test_restarted_vllm_gets_its_adapters_back(vllm_server: Any, agent, adapters) -> None:
    instance, client = agent
    folder, digest = adapters["v1"]
    await client.put("support-v1", f"file://{folder}", digest)
    before = await asyncio.to_thread(greedy, vllm_server, "support-v1")
    first_load = instance.records["support-v1"].loaded_at

    # In a thread: the agent's watch loop runs on this event loop while vLLM is down and coming back.
    await asyncio.to_thread(vllm_server.restart)
    await wait_loaded_again(instance, "support-v1", first_load)
    assert "support-v1" in await asyncio.to_thread(vllm_server.models)
    assert not differs(await asyncio.to_thread(greedy, vllm_server, "support-v1"), before)
    assert await client.ready()
