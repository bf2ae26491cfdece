"""`loraops digest` and `loraops agent` as a user runs them."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from loraops.cli import main

pytestmark = pytest.mark.adapters


def loraops(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_digest_prints_the_rule_also_computed_by_sha256sum(new_adapter, tmp_path: pathlib.Path, capsys) -> None:
    folder, digest = new_adapter(tmp_path / "peft", manifest=False)
    (folder / "sub").mkdir()
    (folder / "sub" / "tokenizer.json").write_text("{}")
    (folder / ".checkpoints").mkdir()
    (folder / ".checkpoints" / "state.pt").write_bytes(b"not part of the adapter")
    code, out, err = loraops(capsys, "digest", str(folder))
    assert code == 0, err
    # The shell one-liner documented with the digest rule, as an independent implementation.
    shell = subprocess.run(
        "find . -type f ! -path '*/.*' ! -path ./loraops-manifest.json | sed 's|^\\./||' | LC_ALL=C sort"
        " | xargs -d '\\n' sha256sum | sha256sum | cut -d' ' -f1",
        shell=True,
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.strip() == shell.stdout.strip() != digest  # a new file changed the digest
    listing = json.loads(loraops(capsys, "digest", "--json", str(folder))[1])
    assert listing["digest"] == shell.stdout.strip()
    assert sorted(f["name"] for f in listing["files"]) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/tokenizer.json",
    ]


def test_digest_refuses_what_the_agent_would_refuse(new_adapter, tmp_path: pathlib.Path, capsys) -> None:
    folder, _ = new_adapter(tmp_path / "peft")
    (folder / "link.bin").symlink_to(folder / "adapter_model.safetensors")
    code, out, err = loraops(capsys, "digest", str(folder))
    assert code == 1 and "symlink" in err and out == ""
    assert loraops(capsys, "digest", str(tmp_path / "missing"))[0] == 2


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_agent_command_serves_probes_and_api(tmp_path: pathlib.Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraops.cli",
            "agent",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--adapters-dir",
            str(tmp_path / "adapters"),
            "--vllm-url",
            f"http://127.0.0.1:{closed}",
        ],
        stdout=(tmp_path / "agent.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "agent did not come up"
                time.sleep(0.1)
        assert (status, body) == (200, {"ok": True})
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and body["vllmUp"] is False  # no vLLM behind it
        assert get(f"http://127.0.0.1:{port}/v1/adapters") == (200, {"adapters": [], "vllmUp": False})
    finally:
        process.terminate()
        process.wait(10)


def test_agent_flags_of_issue_10_reach_the_config(tmp_path: pathlib.Path) -> None:
    import argparse

    from loraops.agent.cli import add_agent_command, config_from_args

    parser = argparse.ArgumentParser()
    add_agent_command(parser.add_subparsers())
    base = ["agent", "--adapters-dir", str(tmp_path)]
    defaults = config_from_args(parser.parse_args(base))
    assert (defaults.base_model_dir, defaults.unknown_architecture, defaults.lora_embeddings, defaults.probe) == (
        None,
        "allow",
        False,
        True,
    )
    args = [
        *base,
        "--base-model-dir",
        "/models/llama",
        "--unknown-architecture",
        "refuse",
        "--lora-embeddings",
        "--no-probe",
        "--converter-python",
        "/opt/torch/bin/python",
    ]
    config = config_from_args(parser.parse_args(args))
    assert config.base_model_dir == pathlib.Path("/models/llama")
    assert (config.unknown_architecture, config.lora_embeddings, config.probe) == ("refuse", True, False)
    assert config.converter_python == "/opt/torch/bin/python"
