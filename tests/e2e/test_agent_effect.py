"""Issue 10 on the real vLLM CPU server: adapters vLLM would load and silently not apply are caught.

NOTES: vLLM 0.32 answers 200 to an adapter with PEFT's default init (B = 0) and to one with a wrong tensor
prefix, then serves base answers under their names; it also loads pickle `adapter_model.bin`. Here the agent
refuses the pickle and the wrong prefix before vLLM sees them, and flags the B = 0 adapter NoEffect.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from loraops.agent.client import AgentClient, AgentError
from loraops.agent.config import AgentConfig
from loraops.agent.server import build_app
from loraops.agent.service import Agent
from loraops_trainer.manifest import hash_directory

pytestmark = [pytest.mark.e2e, pytest.mark.adapters]


def peft_adapter(base: pathlib.Path, out: pathlib.Path, *, random_init: bool, safetensors: bool = True) -> str:
    """A LoRA of the tiny model, untrained: PEFT's default init (B = 0) or random A and B; returns its digest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=not random_init)
    get_peft_model(model, config).save_pretrained(str(out), safe_serialization=safetensors)
    return hash_directory(out)[0]


def renamed(source: pathlib.Path, out: pathlib.Path) -> str:
    """`source` with its tensors moved under a GPT-2-style prefix (`transformer.h.N.attn`): loads, applies nowhere."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    (out / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    tensors = load_file(str(source / "adapter_model.safetensors"))
    moved = {
        k.replace("model.model.layers.", "model.transformer.h.").replace("self_attn", "attn"): v
        for k, v in tensors.items()
    }
    assert moved.keys() != tensors.keys()
    save_file(moved, str(out / "adapter_model.safetensors"))
    return hash_directory(out)[0]


@pytest.fixture(scope="module")
def folders(tiny_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[pathlib.Path, str]]:
    root = tmp_path_factory.mktemp("agent-effect-adapters")
    made = {
        "zero-b": (root / "zero-b", peft_adapter(tiny_model, root / "zero-b", random_init=False)),
        "random": (root / "random", peft_adapter(tiny_model, root / "random", random_init=True)),
        "pickle": (root / "pickle", peft_adapter(tiny_model, root / "pickle", random_init=True, safetensors=False)),
    }
    made["prefix"] = (root / "prefix", renamed(made["random"][0], root / "prefix"))
    assert [p.name for p in made["pickle"][0].iterdir() if p.suffix == ".bin"] == ["adapter_model.bin"]
    return made


@pytest_asyncio.fixture
async def client(vllm_server: Any, tmp_path: pathlib.Path) -> AsyncIterator[AgentClient]:
    # No --base-model-dir: the agent reads the architecture from the folder vLLM lists as the base's root.
    config = AgentConfig(adapters_dir=tmp_path / "adapters", vllm_url=vllm_server.url, vllm_timeout=60)
    server = TestServer(build_app(Agent(config), watch=False), host="127.0.0.1")
    await server.start_server()
    agent = AgentClient(str(server.make_url("")).rstrip("/"))
    try:
        yield agent
    finally:
        # Leave vLLM as the session found it: other modules share this server.
        for record in await agent.list():
            await agent.delete(record.name)
        await agent.close()
        await server.close()


def uri(folder: pathlib.Path) -> str:
    return f"file://{folder}"


@pytest.mark.asyncio
async def test_untrained_zero_b_adapter_loads_and_is_flagged_no_effect(vllm_server: Any, client, folders) -> None:
    folder, digest = folders["zero-b"]
    record = await client.put("zero-b", uri(folder), digest)
    assert (record.state, record.compatibility, record.effective) == ("Loaded", "Compatible", False)
    assert "no effect" in str(record.probe_message)
    assert "zero-b" in await asyncio.to_thread(vllm_server.models)  # kept loaded: the operator marks it not Ready


@pytest.mark.asyncio
async def test_randomly_initialised_adapter_is_effective_and_prewarmed(vllm_server: Any, client, folders) -> None:
    folder, digest = folders["random"]
    record = await client.put("random", uri(folder), digest)
    assert (record.state, record.compatibility, record.effective, record.rank) == ("Loaded", "Compatible", True, 8)
    assert record.probe_latency_seconds is not None and record.probe_latency_seconds > 0


@pytest.mark.asyncio
async def test_pickle_only_adapter_is_refused_unless_converted(vllm_server: Any, client, folders) -> None:
    folder, digest = folders["pickle"]
    with pytest.raises(AgentError) as refused:
        await client.put("pickled", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "UnsafeFormat")
    assert "pickled" not in await asyncio.to_thread(vllm_server.models)

    record = await client.put("pickled", uri(folder), digest, convert_pickle=True)
    assert (record.state, record.converted_from, record.effective) == ("Loaded", "adapter_model.bin", True)


@pytest.mark.asyncio
async def test_wrong_prefix_adapter_is_refused_before_load(vllm_server: Any, client, folders) -> None:
    folder, digest = folders["prefix"]
    with pytest.raises(AgentError) as refused:
        await client.put("prefixed", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "IncompatibleModules")
    assert "transformer.h.0.attn.q_proj" in refused.value.message
    assert "prefixed" not in await asyncio.to_thread(vllm_server.models)
