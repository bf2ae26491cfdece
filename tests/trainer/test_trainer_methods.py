"""Each method trains the tiny Llama on a learnable pattern; the loss falls by a clear relative margin."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.config import TrainConfig, parse_config

pytestmark = pytest.mark.trainer

# Learning rates per method: rsLoRA scales the update by alpha/sqrt(r) instead of alpha/r (here 2.8x larger);
# LoRA+ multiplies the B matrices' rate by the ratio.
CASES = [
    pytest.param("lora", None, 1e-2, id="lora"),
    pytest.param("qlora", None, 1e-2, id="qlora"),
    pytest.param("dora", None, 1e-2, id="dora"),
    pytest.param("rslora", None, 3e-3, id="rslora"),
    pytest.param("lora", 16.0, 2e-3, id="lora+loraplus16"),
]


@pytest.mark.parametrize(("method", "ratio", "learning_rate"), CASES)
def test_method_learns_the_pattern(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    train_inprocess: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]],
    method: str,
    ratio: float | None,
    learning_rate: float,
) -> None:
    output = tmp_path / "adapter"
    config = testing.train_config(
        tiny_model,
        datasets["chat"],
        output,
        fmt="chat",
        method=method,
        max_steps=40,
        loraPlusRatio=ratio,
        hyperparameters={"learningRate": learning_rate},
        progress={"intervalSteps": 5},
    )
    result, events = train_inprocess(config)
    losses = [event["loss"] for event in events if event["event"] == "progress"]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert sum(losses[-2:]) / 2 < 0.3 * losses[0], losses
    assert result["metrics"]["train_loss_last"] < 0.3 * result["metrics"]["train_loss_first"]

    manifest = json.loads((output / "loraops-manifest.json").read_text())
    assert manifest["method"] == method
    assert manifest.get("loraPlusRatio") == ratio
    assert manifest["mergeState"] == "unmerged"
    assert manifest["digest"] == result["digest"]
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is (method == "dora")
    assert adapter_config["use_rslora"] is (method == "rslora")
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert adapter_config["base_model_name_or_path"] == "tiny-llama"
    assert (manifest["baseModel"].get("quantization") == "nf4-double-quant") is (method == "qlora")


def test_qlora_trains_adapters_over_a_4bit_base(tiny_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import bitsandbytes as bnb
    import torch

    from loraops_trainer.methods import load_peft_model, trainable_parameters

    config = parse_config(
        TrainConfig,
        testing.train_config(tiny_model, tmp_path / "d.jsonl", tmp_path / "o", method="qlora"),
        "test",
    )
    model = load_peft_model(config, tiny_model, torch.device("cpu"), torch.float32)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 14  # 7 linear layers x 2 blocks, every one under a LoRA
    assert quantized[0].weight.quant_type == "nf4"
    assert all("lora_" in name for name in trainable_parameters(model))


def test_lora_plus_gives_b_matrices_ratio_times_the_rate(tiny_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import torch

    from loraops_trainer.methods import load_peft_model, parameter_groups, trainable_parameters

    config = parse_config(
        TrainConfig, testing.train_config(tiny_model, tmp_path / "d.jsonl", tmp_path / "o", method="dora"), "t"
    )
    model = load_peft_model(config, tiny_model, torch.device("cpu"), torch.float32)
    names = {id(p): n for n, p in trainable_parameters(model).items()}
    slow, fast = parameter_groups(model, 1e-4, 16.0, 0.0)
    assert fast["lr"] == pytest.approx(16 * slow["lr"])
    assert fast["params"] and all(".lora_B." in names[id(p)] for p in fast["params"])
    slow_names = [names[id(p)] for p in slow["params"]]
    assert any(".lora_A." in n for n in slow_names) and any("lora_magnitude_vector" in n for n in slow_names)
    assert len(fast["params"]) + len(slow["params"]) == len(names)
    (single,) = parameter_groups(model, 1e-4, None, 0.0)
    assert len(single["params"]) == len(names)


def test_all_linear_and_named_targets_are_recorded(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    train_inprocess: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    config = testing.train_config(
        tiny_model,
        datasets["text"],
        tmp_path / "o",
        fmt="text",
        max_steps=3,
        lora={"targetModules": ["q_proj", "v_proj"]},
        hyperparameters={"packing": True, "gradientAccumulation": 2},
        dataset={"evalSplit": 0.1},
    )
    result, events = train_inprocess(config)
    (started,) = [e for e in events if e["event"] == "started"]
    assert started["target_modules"] == ["q_proj", "v_proj"]
    assert started["sequences"] < started["rows"]["train"]["kept"]  # packed
    manifest = json.loads((tmp_path / "o" / "loraops-manifest.json").read_text())
    assert manifest["lora"]["targetModules"] == ["q_proj", "v_proj"]
    assert manifest["dataset"]["rows"]["eval"] == 6 and manifest["dataset"]["rows"]["train"] == 58
    assert manifest["metrics"]["evalLoss"] == pytest.approx(result["metrics"]["eval_loss"])
    assert manifest["hyperparameters"]["effectiveBatchSize"] == 16


def test_a_separate_eval_file_is_read_hashed_and_recorded(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    train_inprocess: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    import hashlib

    held_out = testing.write_jsonl(tmp_path / "eval.jsonl", testing.capital_rows("completion", 5, seed=9))
    digest = hashlib.sha256(held_out.read_bytes()).hexdigest()
    config = testing.train_config(
        tiny_model,
        datasets["completion"],
        tmp_path / "o",
        max_steps=2,
        dataset={"evalUri": f"file://{held_out}", "evalSha256": digest},
    )
    result, events = train_inprocess(config)
    (evaluation,) = [e for e in events if e["event"] == "eval"]
    assert evaluation["examples"] == 5 and evaluation["eval_loss"] == pytest.approx(
        result["metrics"]["eval_loss"], rel=1e-5
    )
    manifest = json.loads((tmp_path / "o" / "loraops-manifest.json").read_text())
    assert manifest["dataset"]["eval"] == {"uri": f"file://{held_out}", "sha256": digest}
    assert manifest["dataset"]["rows"]["train"] == 64 and manifest["dataset"]["rows"]["eval"] == 5
