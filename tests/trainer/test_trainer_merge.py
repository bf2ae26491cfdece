"""merge: the merged model computes what base + adapter computes, and its manifest ties it to both."""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable

import pytest

from loraops_trainer import testing
from loraops_trainer.errors import EXIT_INTEGRITY
from loraops_trainer.manifest import hash_directory

from .conftest import Outcome, train_quietly

pytestmark = pytest.mark.trainer


def test_merge_matches_the_dynamic_adapter_and_records_both_digests(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path: pathlib.Path, cli: Callable[..., Outcome]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    train_quietly(testing.train_config(tiny_model, datasets["completion"], adapter, max_steps=10))
    merged = tmp_path / "merged"
    outcome = cli("merge", "--adapter", str(adapter), "--base-model", str(tiny_model), "--output", str(merged))
    assert outcome.code == 0, outcome.events
    manifest = json.loads((merged / "loraops-manifest.json").read_text())
    adapter_manifest = json.loads((adapter / "loraops-manifest.json").read_text())
    assert manifest["kind"] == "merged-model" and manifest["mergeState"] == "merged"
    assert manifest["adapter"]["digest"] == adapter_manifest["digest"] == outcome.last["adapter_digest"]
    assert manifest["baseModel"]["weightsDigest"] == hash_directory(tiny_model)[0]
    assert manifest["baseModel"]["name"] == "tiny-llama"
    assert manifest["adapter"]["lora"] == adapter_manifest["lora"]
    assert cli("verify", str(merged)).code == 0

    ids = torch.tensor([[0, 5, 17, 42, 99, 120]])
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(str(merged))(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
        base_logits = base(ids).logits
        dynamic_logits = PeftModel.from_pretrained(base, str(adapter))(ids).logits
    assert torch.allclose(merged_logits, dynamic_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)


def test_merge_refuses_a_tampered_adapter(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path: pathlib.Path, cli: Callable[..., Outcome]
) -> None:
    adapter = tmp_path / "adapter"
    train_quietly(testing.train_config(tiny_model, datasets["completion"], adapter, max_steps=2))
    shutil.copy(adapter / "adapter_config.json", adapter / "config-backup.json")
    outcome = cli("merge", "--adapter", str(adapter), "--base-model", str(tiny_model), "--output", str(tmp_path / "m"))
    assert outcome.code == EXIT_INTEGRITY and "unexpected file 'config-backup.json'" in outcome.last["message"]
    assert not (tmp_path / "m").exists()
