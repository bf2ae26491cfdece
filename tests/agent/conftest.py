"""Fixtures of the agent tests: a fake vLLM with fault injection, adapter folders, a running agent."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from loraops.agent.client import AgentClient
from loraops.agent.config import AgentConfig
from loraops.agent.server import build_app
from loraops.agent.service import Agent
from loraops.devmode.fakevllm import FakeVllm
from loraops_trainer.manifest import build_manifest, hash_directory, write_manifest

PEFT_TENSORS = tuple(
    f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{part}.weight"
    for layer in (0, 1)
    for module in ("q_proj", "v_proj")
    for part in "AB"
)
"""What PEFT saves for target_modules q_proj, v_proj on a 2-layer Llama."""


def write_safetensors(path: pathlib.Path, names: Sequence[str], size: int, seed: int = 0) -> None:
    """A valid safetensors file (U8 tensors, `size` data bytes in all) with these tensor names."""
    each = max(1, size // max(1, len(names)))
    header: dict[str, Any] = {}
    for index, name in enumerate(names):
        header[name] = {"dtype": "U8", "shape": [each], "data_offsets": [index * each, (index + 1) * each]}
    encoded = json.dumps(header).encode()
    data = bytes((seed + i) % 256 for i in range(each * len(names)))
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def make_adapter(
    root: pathlib.Path,
    *,
    manifest: bool = True,
    seed: int = 0,
    weights_size: int = 4096,
    tensors: Sequence[str] = PEFT_TENSORS,
    target_modules: list[str] | str | None = None,
) -> tuple[pathlib.Path, str]:
    """A PEFT-shaped folder (config + weights, optionally the loraops manifest); returns (folder, digest)."""
    root.mkdir(parents=True, exist_ok=True)
    targets = ["q_proj", "v_proj"] if target_modules is None else target_modules
    (root / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": targets}),
        encoding="utf-8",
    )
    write_safetensors(root / "adapter_model.safetensors", tensors, weights_size, seed)
    if manifest:
        write_manifest(root, build_manifest(root, kind="adapter", merge_state="unmerged"))
    digest, _ = hash_directory(root)
    return root, digest


def tree(root: pathlib.Path) -> list[str]:
    """Every entry under root (relative), to show what a failure left behind."""
    if not root.exists():
        return []
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in [*ds, *fs])


@pytest_asyncio.fixture
async def fake_vllm() -> AsyncIterator[FakeVllm]:
    fake = FakeVllm()
    await fake.start()
    yield fake
    await fake.stop()


@dataclass
class Running:
    agent: Agent
    client: AgentClient
    url: str
    config: AgentConfig


AgentFactory = Callable[..., Awaitable[Running]]


@pytest_asyncio.fixture
async def start_agent(tmp_path: pathlib.Path, fake_vllm: FakeVllm) -> AsyncIterator[AgentFactory]:
    """Start an agent in front of the fake vLLM; keyword arguments override AgentConfig fields."""
    servers: list[TestServer] = []
    clients: list[AgentClient] = []

    async def start(*, watch: bool = False, token: str | None = None, **overrides: Any) -> Running:
        options: dict[str, Any] = {
            "adapters_dir": tmp_path / "adapters",
            "vllm_url": fake_vllm.url,
            "pvc_root": tmp_path / "pvc",
            "watch_interval": 0.05,
            "vllm_timeout": 5.0,
            "token": token,
        }
        options.update(overrides)
        config = AgentConfig(**options)
        agent = Agent(config)
        server = TestServer(build_app(agent, watch=watch), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        url = str(server.make_url("")).rstrip("/")
        client = AgentClient(url, token=token)
        clients.append(client)
        return Running(agent=agent, client=client, url=url, config=config)

    yield start
    for client in clients:
        await client.close()
    for server in servers:
        await server.close()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for a condition the agent reaches on its own (its watch loop); fails with `what` if it never does."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def llama_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A base model folder as the agent reads it: only config.json matters (architecture, layer count)."""
    folder = tmp_path / "models" / "tiny-llama"
    folder.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture
def adapter(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
    return make_adapter(tmp_path / "src" / "support-v1")


# Helpers reach the test modules as fixtures: test files are imported by path, not as a package.
@pytest.fixture
def new_adapter() -> Callable[..., tuple[pathlib.Path, str]]:
    return make_adapter


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[None]]:
    return eventually


@pytest.fixture
def list_tree() -> Callable[[pathlib.Path], list[str]]:
    return tree
