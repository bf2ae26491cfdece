"""The e2e tier's real vLLM (CPU build): one server per test session, with a tiny generated model.

Startup takes 25–40 s, so the server is session-scoped; it is stopped (the whole process group) at the end of
the session whatever happened. Ready means a real completion succeeded (see `loraops.devmode.vllm`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    pytest.importorskip("vllm")
    from loraops_trainer.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def vllm_server(tiny_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from loraops.devmode.vllm import VllmOptions, VllmServer

    server = VllmServer(
        VllmOptions(model=tiny_model, served_name="tiny-llama"),
        log_path=tmp_path_factory.mktemp("vllm-log") / "vllm.log",
    )
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()
