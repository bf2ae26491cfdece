"""Issue 10 through the real controller and real agents (each in front of a fake vLLM): the spec's probe and
convertPickle reach the agents, an adapter that answers like the base model is NoEffect and not Ready, and each
release is loaded under its own served name."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from loraops.adapters.placement import served_name
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.fakevllm import FakeVllm
from loraops_trainer.manifest import hash_directory
from tests.conftest import NAMESPACE
from tests.support import wait_for

from .conftest import Cluster, adapter_manifest, make_adapter

pytestmark = pytest.mark.adapters


def status(api: FakeKubeApi, name: str) -> dict[str, Any]:
    return ((api.get("loraadapters", NAMESPACE, name) or {}).get("status")) or {}


def condition(api: FakeKubeApi, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in status(api, name).get("conditions", []) if c["type"] == type_), {})


def vllm(cluster: Cluster, pod: str) -> FakeVllm:
    fake = cluster.replicas.replicas[pod].vllm
    assert fake is not None
    return fake


def test_probe_settings_reach_the_agent_and_no_effect_is_not_ready(
    fake_api: FakeKubeApi, cluster: Cluster, adapter_operator: Any, examples: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    tuned_folder, tuned = make_adapter(tmp_path / "tuned", seed=1)
    zero_folder, zero = make_adapter(tmp_path / "zero", seed=2)
    prompts = ["Ticket 7: the printer is on fire.", "Ticket 8: refund please."]
    body = adapter_manifest(examples["LoraAdapter"], "tuned", tuned_folder, tuned)
    body["spec"]["probe"] = {"prompts": prompts, "maxTokens": 3}
    fake_api.create("loraadapters", body, NAMESPACE)
    pod = cluster.add_pod()
    # The fake vLLM answers this served name exactly like the base model, as vLLM does for a B = 0 adapter.
    vllm(cluster, pod).answers[served_name("zero-b", zero)] = "base"
    fake_api.create("loraadapters", adapter_manifest(examples["LoraAdapter"], "zero-b", zero_folder, zero), NAMESPACE)

    good = wait_for(lambda: status(fake_api, "tuned").get("phase") == "Ready" and status(fake_api, "tuned"), timeout=30)
    assert good["servedName"] == served_name("tuned", tuned)
    assert condition(fake_api, "tuned", "Effective")["status"] == "True"
    asked = [c for c in vllm(cluster, pod).completions if c["model"] == served_name("tuned", tuned)]
    assert [c["prompt"] for c in asked] == prompts and {c["max_tokens"] for c in asked} == {3}

    effect = wait_for(lambda: condition(fake_api, "zero-b", "Effective").get("status") == "False", timeout=30)
    assert effect
    refuted = condition(fake_api, "zero-b", "Effective")
    assert refuted["reason"] == "NoEffect" and refuted["message"].startswith(f"pod {pod}: ")
    assert "base" in refuted["message"], refuted
    current = status(fake_api, "zero-b")
    ready = condition(fake_api, "zero-b", "Ready")
    assert (ready["status"], ready["reason"], current["phase"]) == ("False", "NoEffect", "Failed")
    assert current["placements"][0]["state"] == "Loaded" and current["placements"][0]["effective"] is False
    warnings = [e for e in fake_api.list("events", NAMESPACE) if e.get("reason") == "NoEffect"]
    assert warnings and warnings[0]["type"] == "Warning"
    assert set(vllm(cluster, pod).adapters) == {served_name("tuned", tuned), served_name("zero-b", zero)}
    assert not any(b.get("load_inplace") for b in vllm(cluster, pod).loads()), "never load_inplace"


def test_pickle_weights_are_refused_unless_the_spec_opts_in(
    fake_api: FakeKubeApi, cluster: Cluster, adapter_operator: Any, examples: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    import torch

    for name, opt_in in (("plain", False), ("opted-in", True)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}')
        weights = {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(8, 16),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(16, 8),
        }
        torch.save(weights, folder / "adapter_model.bin")
        digest, _ = hash_directory(folder)
        body = adapter_manifest(examples["LoraAdapter"], name, folder, digest)
        body["spec"]["source"]["convertPickle"] = opt_in
        fake_api.create("loraadapters", body, NAMESPACE)
    pod = cluster.add_pod()

    refused = wait_for(lambda: condition(fake_api, "plain", "Verified").get("status") == "False", timeout=30)
    assert refused and condition(fake_api, "plain", "Verified")["reason"] == "UnsafeFormat"
    assert "convertPickle" in condition(fake_api, "plain", "Verified")["message"], "says how to opt in"
    converted = wait_for(lambda: status(fake_api, "opted-in").get("phase") == "Ready", timeout=30)
    assert converted, status(fake_api, "opted-in")
    path = pathlib.Path(vllm(cluster, pod).adapters[status(fake_api, "opted-in")["servedName"]])
    assert (path / "adapter_model.safetensors").is_file() and not (path / "adapter_model.bin").exists()
    assert not any(n.startswith("plain") for n in vllm(cluster, pod).adapters), "the refused one never reached vLLM"
