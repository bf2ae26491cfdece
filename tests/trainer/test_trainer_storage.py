"""Where inputs are read from: local paths, file://, pvc:// (the mount convention) and hub ids."""

from __future__ import annotations

import pathlib

import pytest

from loraops_trainer import testing
from loraops_trainer.config import BaseModelConfig
from loraops_trainer.data import read_data_file
from loraops_trainer.errors import ConfigError
from loraops_trainer.storage import local_path

pytestmark = pytest.mark.trainer


def test_pvc_uris_resolve_under_the_mount_root(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAOPS_PVC_ROOT", str(tmp_path / "mnt"))
    assert local_path("pvc://datasets/support/v1.jsonl") == tmp_path / "mnt" / "datasets" / "support" / "v1.jsonl"
    assert local_path("file:///data/x.jsonl") == pathlib.Path("/data/x.jsonl")
    testing.write_jsonl(tmp_path / "mnt" / "datasets" / "support" / "v1.jsonl", testing.capital_rows("text", 4))
    data = read_data_file("pvc://datasets/support/v1.jsonl", "text", None, tmp_path)
    assert len(data.rows) == 4
    with pytest.raises(ConfigError, match="unsupported scheme"):
        local_path("gs://bucket/data.jsonl")
    with pytest.raises(ConfigError, match="claim name"):
        local_path("pvc:///data.jsonl")


def test_a_hub_id_the_pod_cannot_fetch_is_a_config_error(tmp_path: pathlib.Path) -> None:
    from loraops_trainer.methods import resolve_base_model

    with pytest.raises(ConfigError) as raised:
        resolve_base_model(BaseModelConfig(name="loraops-tests/no-such-model-anywhere"), tmp_path)
    assert raised.value.reason == "BaseModelNotFound" and "baseModel.path" in raised.value.message


def test_a_pvc_base_model_resolves(
    tiny_model: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraops_trainer.methods import resolve_base_model

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_model)
    monkeypatch.setenv("LORAOPS_PVC_ROOT", str(tmp_path))
    resolved = resolve_base_model(BaseModelConfig(name="tiny", uri="pvc://models/tiny"), tmp_path)
    assert (resolved / "config.json").is_file()
