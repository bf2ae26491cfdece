"""The config schema: CRD-shaped camelCase, strict about typos, tolerant of the operator's own fields."""

from __future__ import annotations

import pathlib

import pytest

from loraops_trainer.config import TrainConfig, load_train_config, parse_config
from loraops_trainer.errors import EXIT_CONFIG, ConfigError

pytestmark = pytest.mark.trainer

MINIMAL = {
    "baseModel": {"name": "org/model", "path": "/models/m"},
    "dataset": {"uri": "s3://bucket/data.jsonl", "version": "2026-11"},
    "output": {"uri": "s3://bucket/adapters/a"},
}


def test_minimal_config_gets_documented_defaults() -> None:
    config = parse_config(TrainConfig, MINIMAL, "cfg")
    assert config.method == "lora"
    assert config.dataset.format == "chat"
    assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config.hyperparameters.warmup_for(100) == 3  # 3 % by default


def test_camel_case_and_snake_case_both_load() -> None:
    camel = parse_config(TrainConfig, {**MINIMAL, "loraPlusRatio": 16, "hyperparameters": {"maxSeqLength": 512}}, "c")
    snake = parse_config(
        TrainConfig, {**MINIMAL, "lora_plus_ratio": 16, "hyperparameters": {"max_seq_length": 512}}, "s"
    )
    assert camel == snake
    assert camel.model_dump(by_alias=True)["hyperparameters"]["maxSeqLength"] == 512


def test_a_whole_loratraining_spec_loads_and_operator_fields_are_dropped() -> None:
    spec = {
        **MINIMAL,
        "dataset": {**MINIMAL["dataset"], "credentialsSecretRef": {"name": "s3-reader"}},
        "lora": {"rank": 8, "alpha": 16, "targetModules": ["all-linear"]},
        "checkpointIntervalSteps": 25,
        "resources": {"nodes": 2, "gpusPerNode": 4},
        "runPolicy": {"backoffLimit": 2},
        "adapterTemplate": {"serving": {"deployment": "llama"}},
        "output": {"uri": "s3://b/o", "credentialsSecretRef": {"name": "s3-writer"}},
        "suspend": False,
    }
    config = parse_config(TrainConfig, spec, "spec")
    assert config.checkpoint.interval_steps == 25
    assert config.lora.target_modules == "all-linear"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"lora": {"alpha": -1}}, "lora.alpha"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"method": "ia3"}, "method"),
        ({"dataset": {"uri": "x", "version": "1", "format": "csv"}}, "dataset.format"),
        ({"dataset": {"uri": "x", "version": "1", "evalSplit": 0.1, "evalUri": "y"}}, "dataset"),
        ({"hyperparameters": {"warmupSteps": 5, "warmupRatio": 0.1}}, "hyperparameters"),
        ({"hyperparameters": {"learningRte": 1e-4}}, "hyperparameters.learningRte"),
        ({"lora": {"targetModules": ["all-linear", "q_proj"]}}, "lora.targetModules"),
        ({"lora": {"targetModules": []}}, "lora.targetModules"),
        ({"loraPlusRatio": 0.5}, "loraPlusRatio"),
    ],
)
def test_invalid_values_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(TrainConfig, {**MINIMAL, **change}, "cfg.yaml")
    assert raised.value.reason == "InvalidConfig"
    assert raised.value.exit_code == EXIT_CONFIG
    assert f"{field}:" in raised.value.message or f"{field}." in raised.value.message


def test_fingerprint_follows_what_is_trained_not_how_it_is_reported() -> None:
    base = parse_config(TrainConfig, MINIMAL, "a")
    chattier = parse_config(
        TrainConfig, {**MINIMAL, "progress": {"intervalSteps": 1}, "checkpoint": {"intervalSteps": 7}}, "b"
    )
    other_lr = parse_config(TrainConfig, {**MINIMAL, "hyperparameters": {"learningRate": 1e-3}}, "c")
    assert base.fingerprint() == chattier.fingerprint()
    assert base.fingerprint() != other_lr.fingerprint()


def test_config_files_yaml_json_and_unreadable(tmp_path: pathlib.Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "baseModel: {name: m, path: /m}\ndataset: {uri: /d.jsonl, version: v1, format: text}\noutput: {uri: /o}\n"
    )
    assert load_train_config(tmp_path / "c.yaml").dataset.format == "text"
    with pytest.raises(ConfigError) as missing:
        load_train_config(tmp_path / "absent.yaml")
    assert missing.value.reason == "ConfigNotReadable"
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(tmp_path / "list.yaml")
