"""Bad input: a clear message naming the problem, a config-error exit code distinct from runtime failures,
and nothing written to the output location."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.errors import EXIT_CONFIG, EXIT_INTEGRITY, EXIT_RUNTIME, EXIT_USAGE

from .conftest import Outcome, run_program, write_config

pytestmark = pytest.mark.trainer

Case = Callable[[pathlib.Path, pathlib.Path, dict[str, pathlib.Path]], dict[str, Any]]


def base(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path], **overrides: Any) -> dict[str, Any]:
    return testing.train_config(model, data["completion"], tmp / "out", max_steps=2, **overrides)


def missing_dataset(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, dataset={"uri": str(tmp / "nope.jsonl")})


def dataset_is_a_directory(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, dataset={"uri": str(tmp)})


def dataset_not_utf8(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    (tmp / "binary.jsonl").write_bytes(b'{"prompt": "\xff\xfe", "completion": "x"}\n')
    return base(tmp, model, data, dataset={"uri": str(tmp / "binary.jsonl")})


def malformed_line(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    lines = data["completion"].read_text().splitlines()
    lines[4] = lines[4][:-3]
    (tmp / "broken.jsonl").write_text("\n".join(lines) + "\n")
    return base(tmp, model, data, dataset={"uri": str(tmp / "broken.jsonl")})


def empty_after_filtering(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    rows = [{"prompt": "the quick brown fox jumps over the lazy dog. " * 20, "completion": " yes"}] * 3
    testing.write_jsonl(tmp / "long.jsonl", rows)
    return base(tmp, model, data, dataset={"uri": str(tmp / "long.jsonl")})


def empty_file(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    (tmp / "empty.jsonl").write_text("\n\n")
    return base(tmp, model, data, dataset={"uri": str(tmp / "empty.jsonl")})


def unknown_format(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, dataset={"format": "parquet"})


def unknown_target_module(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, lora={"targetModules": ["q_proj", "query_key_value"]})


def rank_zero(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, lora={"rank": 0})


def negative_alpha(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, lora={"alpha": -8})


def output_not_writable(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    (tmp / "a-file").write_text("x")
    return base(tmp, model, data, output={"uri": str(tmp / "a-file" / "adapter")})


def sequence_too_long(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, hyperparameters={"maxSeqLength": 4096})


def missing_base_model(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    config = base(tmp, model, data)
    config["baseModel"] = {"name": "tiny", "uri": f"file://{tmp}/no-model"}
    return config


def dataset_digest_mismatch(tmp: pathlib.Path, model: pathlib.Path, data: dict[str, pathlib.Path]) -> dict[str, Any]:
    return base(tmp, model, data, dataset={"sha256": "0" * 64})


CASES: list[tuple[Case, int, str, list[str]]] = [
    (missing_dataset, EXIT_CONFIG, "DatasetNotFound", ["nope.jsonl", "no such file"]),
    (dataset_is_a_directory, EXIT_CONFIG, "DatasetNotFound", ["not a file"]),
    (dataset_not_utf8, EXIT_CONFIG, "DatasetInvalid", ["UTF-8"]),
    (malformed_line, EXIT_CONFIG, "DatasetInvalid", ["line 5", "not valid JSON"]),
    (empty_after_filtering, EXIT_CONFIG, "DatasetEmpty", ["no example left", "maxSeqLength"]),
    (empty_file, EXIT_CONFIG, "DatasetEmpty", ["no rows"]),
    (unknown_format, EXIT_CONFIG, "InvalidConfig", ["dataset.format", "'chat', 'completion' or 'text'"]),
    (unknown_target_module, EXIT_CONFIG, "TargetModuleNotFound", ["query_key_value", "q_proj, up_proj, v_proj"]),
    (rank_zero, EXIT_CONFIG, "InvalidConfig", ["lora.rank"]),
    (negative_alpha, EXIT_CONFIG, "InvalidConfig", ["lora.alpha", "greater than 0"]),
    (output_not_writable, EXIT_CONFIG, "OutputNotWritable", ["cannot write"]),
    (sequence_too_long, EXIT_CONFIG, "SequenceTooLong", ["4096", "512"]),
    (missing_base_model, EXIT_CONFIG, "BaseModelNotFound", ["no-model"]),
    (dataset_digest_mismatch, EXIT_INTEGRITY, "DatasetDigestMismatch", ["0000000000"]),
]


@pytest.mark.parametrize(("make", "code", "reason", "words"), CASES, ids=[case[0].__name__ for case in CASES])
def test_bad_input_fails_early_with_its_reason(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    cli: Callable[..., Outcome],
    make: Case,
    code: int,
    reason: str,
    words: list[str],
) -> None:
    config = write_config(tmp_path / "config.json", make(tmp_path, tiny_model, datasets))
    outcome = cli("train", "--config", str(config))
    assert outcome.code == code
    error = outcome.last
    assert error["event"] == "error" and error["reason"] == reason and error["exit_code"] == code
    for word in words:
        assert word in error["message"]
    assert not [e for e in outcome.events if e["event"] == "progress"]
    assert not (tmp_path / "out").exists()


def test_qlora_without_bitsandbytes_is_a_config_error(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    cli: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when absent
    config = write_config(tmp_path / "config.json", base(tmp_path, tiny_model, datasets, method="qlora"))
    outcome = cli("train", "--config", str(config))
    assert outcome.code == EXIT_CONFIG
    assert outcome.last["reason"] == "MissingDependency" and "bitsandbytes" in outcome.last["message"]
    assert not (tmp_path / "out").exists()


def test_config_and_usage_errors_have_their_own_codes(tmp_path: pathlib.Path, cli: Callable[..., Outcome]) -> None:
    missing = cli("train", "--config", str(tmp_path / "absent.yaml"))
    assert missing.code == EXIT_CONFIG and missing.last["reason"] == "ConfigNotReadable"
    (tmp_path / "bad.yaml").write_text("baseModel: [unclosed\n")
    assert cli("train", "--config", str(tmp_path / "bad.yaml")).last["reason"] == "InvalidConfig"
    with pytest.raises(SystemExit) as usage:
        cli("train")
    assert usage.value.code == EXIT_USAGE


def test_real_program_exit_codes_and_termination_log(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """Through a real interpreter: a config error exits 3, an unexpected failure exits 1, and each leaves
    its summary in the termination log."""
    log = tmp_path / "termination-log"
    env = {"LORAOPS_TERMINATION_LOG": str(log)}
    config = write_config(tmp_path / "c.json", unknown_target_module(tmp_path, tiny_model, datasets))
    outcome = run_program("train", "--config", str(config), env=env)
    assert outcome.code == EXIT_CONFIG
    assert json.loads(log.read_text())["reason"] == "TargetModuleNotFound"
    assert "TargetModuleNotFound" in outcome.stderr

    # A model directory whose weights are garbage passes the shape checks and fails at load time.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in tiny_model.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    config = write_config(
        tmp_path / "c2.json", base(tmp_path, tiny_model, datasets, baseModel={"name": "t", "path": str(broken)})
    )
    crashed = run_program("train", "--config", str(config), env=env)
    assert crashed.code == EXIT_RUNTIME
    assert json.loads(log.read_text())["exit_code"] == EXIT_RUNTIME
    assert not (tmp_path / "out" / "loraops-manifest.json").exists()
