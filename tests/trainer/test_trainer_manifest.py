"""The manifest and the digest rule: what `verify` (and the agent) rely on."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.errors import EXIT_CONFIG, EXIT_INTEGRITY
from loraops_trainer.progress import fit_summary

from .conftest import Outcome, train_quietly

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def adapter(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    output = tmp_path_factory.mktemp("manifest") / "adapter"
    config = testing.train_config(
        tiny_model,
        datasets["completion"],
        output,
        max_steps=8,
        release={"name": "capitals", "version": "1.2.0", "promptVersion": "p3"},
    )
    train_quietly(config)
    return output


@pytest.fixture
def copy(adapter: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(adapter, tmp_path / "copy"))


def test_manifest_records_the_release_facts(adapter: pathlib.Path, datasets: dict[str, pathlib.Path]) -> None:
    manifest = json.loads((adapter / "loraops-manifest.json").read_text())
    assert manifest["schemaVersion"] == 1 and manifest["kind"] == "adapter"
    assert manifest["mergeState"] == "unmerged"
    assert manifest["baseModel"]["name"] == "tiny-llama"
    assert manifest["method"] == "lora"
    assert manifest["lora"]["rank"] == 8 and manifest["lora"]["alpha"] == 16
    assert "q_proj" in manifest["lora"]["targetModules"]
    dataset = manifest["dataset"]
    assert dataset["version"] == "test-1" and dataset["uri"] == str(datasets["completion"])
    assert dataset["sha256"] == hashlib.sha256(datasets["completion"].read_bytes()).hexdigest()
    assert dataset["rows"]["train"] == 64
    assert manifest["hyperparameters"]["learningRate"] == 0.01 and manifest["hyperparameters"]["totalSteps"] == 8
    assert manifest["metrics"]["trainLossLast"] < manifest["metrics"]["trainLossFirst"]
    assert manifest["release"] == {"name": "capitals", "version": "1.2.0", "promptVersion": "p3"}
    assert {"torch", "transformers", "peft"} <= set(manifest["libraries"])
    assert manifest["createdAt"].endswith("Z")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        entry = manifest["files"][name]
        assert entry["sha256"] == hashlib.sha256((adapter / name).read_bytes()).hexdigest()
        assert entry["size"] == (adapter / name).stat().st_size
    assert "loraops-manifest.json" not in manifest["files"]


def test_digest_rule_is_the_documented_shell_pipeline(adapter: pathlib.Path) -> None:
    manifest = json.loads((adapter / "loraops-manifest.json").read_text())
    (adapter / ".hidden-editor-file").write_text("ignored by the rule")
    try:
        shell = subprocess.run(
            "find . -type f ! -path '*/.*' ! -path ./loraops-manifest.json | sed 's|^\\./||' | LC_ALL=C sort "
            "| xargs -d '\\n' sha256sum | sha256sum",
            shell=True,
            cwd=adapter,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        (adapter / ".hidden-editor-file").unlink()
    assert shell.stdout.split()[0] == manifest["digest"]


def test_verify_passes_then_one_changed_byte_fails(copy: pathlib.Path, cli: Callable[..., Outcome]) -> None:
    ok = cli("verify", str(copy))
    assert ok.code == 0 and ok.last["ok"] is True
    digest = ok.last["digest"]
    assert cli("verify", str(copy), "--digest", f"sha256:{digest}").code == 0

    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = cli("verify", str(copy))
    assert bad.code == EXIT_INTEGRITY
    report = next(e for e in bad.events if e["event"] == "verify")
    assert report["ok"] is False
    assert "sha256 mismatch for 'adapter_model.safetensors'" in report["problems"]
    assert bad.last["event"] == "error" and bad.last["reason"] == "DigestMismatch"


def test_verify_catches_extra_and_missing_files(copy: pathlib.Path, cli: Callable[..., Outcome]) -> None:
    (copy / ".ignored").write_text("hidden files are outside the rule")
    assert cli("verify", str(copy)).code == 0
    (copy / "extra.bin").write_bytes(b"x")
    extra = cli("verify", str(copy))
    assert (
        extra.code == EXIT_INTEGRITY
        and "unexpected file 'extra.bin' (not in the manifest)" in extra.events[0]["problems"]
    )
    (copy / "extra.bin").unlink()
    (copy / "README.md").unlink()
    missing = cli("verify", str(copy))
    assert missing.code == EXIT_INTEGRITY and "missing file 'README.md'" in missing.events[0]["problems"]


def test_a_plain_peft_folder_is_checked_by_the_rule_alone(
    adapter: pathlib.Path, copy: pathlib.Path, cli: Callable[..., Outcome]
) -> None:
    digest = json.loads((copy / "loraops-manifest.json").read_text())["digest"]
    (copy / "loraops-manifest.json").unlink()
    assert cli("verify", str(copy), "--digest", digest).code == 0
    wrong = cli("verify", str(copy), "--digest", "f" * 64)
    assert wrong.code == EXIT_INTEGRITY
    nothing = cli("verify", str(copy))
    assert nothing.code == EXIT_CONFIG and nothing.last["reason"] == "NothingToVerify"


def test_termination_summary_always_fits_in_4_kib() -> None:
    huge: dict[str, Any] = {
        "event": "error",
        "exit_code": 3,
        "reason": "DatasetInvalid",
        "message": "x" * 10_000,
        "metrics": {f"m{i}": float(i) for i in range(500)},
    }
    text = fit_summary(huge)
    assert len(text.encode()) <= 4096
    parsed = json.loads(text)
    assert parsed["reason"] == "DatasetInvalid" and parsed["message"].startswith("xxx")
    assert fit_summary({"event": "result", "digest": "d"}) == '{"event":"result","digest":"d"}'
