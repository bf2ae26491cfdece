"""What the agent lets vLLM load: safetensors only (pickle refused, or converted on opt-in in a child process),
and only tensors vLLM applies to the served base model (prefix and module names checked before load)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest

from loraops.agent.client import AgentError
from loraops.agent.errors import ArtifactRejected
from loraops.agent.models import AdapterRecord, PutAdapter
from loraops.agent.modules import ARCHITECTURES, BaseModel, check_adapter, read_safetensors_header
from loraops_trainer.manifest import hash_directory
from tests.agent.support import uri

pytestmark = [pytest.mark.adapters]


def pickle_adapter(root: pathlib.Path, extra: dict[str, bytes] | None = None) -> tuple[pathlib.Path, str]:
    """A PEFT folder saved the old way (`adapter_model.bin`, torch.save) — what vLLM also loads (NOTES)."""
    torch = pytest.importorskip("torch")
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}))
    state = {
        f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{part}.weight": torch.full((4, 4), 0.5)
        for layer in (0, 1)
        for part in "AB"
    }
    torch.save(state, root / "adapter_model.bin")
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    digest, _ = hash_directory(root)
    return root, digest


class Payload:
    """Unpickling this runs `touch <marker>`: the code execution a pickle adapter file can carry."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return subprocess.call, (["touch", str(self.marker)],)  # type: ignore[return-value]


# --- safe formats -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pickle_only_folder_is_refused_with_unsafe_format_and_nothing_loaded(
    start_agent, fake_vllm, tmp_path, list_tree
) -> None:
    folder, digest = pickle_adapter(tmp_path / "old-style")
    running = await start_agent()
    with pytest.raises(AgentError) as refused:
        await running.client.put("old", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "UnsafeFormat")
    assert "adapter_model.bin" in refused.value.message
    assert fake_vllm.calls == [] and fake_vllm.completions == []
    assert list_tree(running.config.adapters_dir) == []
    [record] = await running.client.list()
    assert (record.state, record.reason) == ("Failed", "UnsafeFormat")


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["training_args.bin", "optimizer.pt", "rng_state.pth", "extra.pkl", "last.ckpt"])
async def test_any_pickle_file_next_to_safetensors_is_refused(
    start_agent, fake_vllm, tmp_path, new_adapter, name
) -> None:
    folder, _ = new_adapter(tmp_path / "trainer-output", manifest=False)
    (folder / name).write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1: harmless here, refused by its kind
    digest, _ = hash_directory(folder)
    running = await start_agent()
    with pytest.raises(AgentError) as refused:
        await running.client.put("a", uri(folder), digest)
    assert refused.value.reason == "UnsafeFormat" and name in refused.value.message
    assert fake_vllm.loads() == []


@pytest.mark.asyncio
async def test_opted_in_conversion_installs_safetensors_only_and_survives_a_reload(
    start_agent, fake_vllm, tmp_path, llama_dir
) -> None:
    folder, digest = pickle_adapter(tmp_path / "old-style", extra={"training_args.bin": b"\x80\x04K\x01."})
    running = await start_agent(base_model_dir=llama_dir)
    record = await running.client.put("old", uri(folder), digest, convert_pickle=True)
    assert (record.state, record.digest, record.converted_from) == ("Loaded", digest, "adapter_model.bin")
    installed = pathlib.Path(str(record.path))
    assert sorted(p.name for p in installed.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # The converted file is real safetensors with the same tensor names, so the module check ran on it.
    header = read_safetensors_header(installed / "adapter_model.safetensors")
    assert sorted(header) == sorted(
        f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{part}.weight"
        for layer in (0, 1)
        for part in "AB"
    )
    assert record.compatibility == "Compatible" and record.rank == 4

    # A restarted vLLM gets it back: re-verification expects the converted files, not the pickle's digest.
    await fake_vllm.restart()
    await running.agent.check_vllm()
    assert fake_vllm.adapters == {"old": str(installed)}
    assert running.agent.records["old"].state == "Loaded"


@pytest.mark.asyncio
async def test_conversion_refuses_a_pickle_that_carries_code_without_running_it(
    start_agent, fake_vllm, tmp_path, list_tree
) -> None:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    torch.save(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": Payload(marker)},
        folder / "adapter_model.bin",
    )
    digest, _ = hash_directory(folder)
    running = await start_agent()
    with pytest.raises(AgentError) as refused:
        await running.client.put("evil", uri(folder), digest, convert_pickle=True)
    assert (refused.value.status, refused.value.reason) == (422, "UnsafeFormat")
    assert not marker.exists()
    assert fake_vllm.loads() == [] and list_tree(running.config.adapters_dir) == []


@pytest.mark.asyncio
async def test_conversion_without_torch_answers_conversion_unavailable(start_agent, fake_vllm, tmp_path) -> None:
    python = shutil.which("python3", path="/usr/bin")
    if python is None or subprocess.run([python, "-I", "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("needs a Python without torch at /usr/bin/python3")
    folder, digest = pickle_adapter(tmp_path / "old-style")
    running = await start_agent(converter_python=python)
    with pytest.raises(AgentError) as refused:
        await running.client.put("old", uri(folder), digest, convert_pickle=True)
    assert (refused.value.status, refused.value.reason) == (422, "ConversionUnavailable")
    assert "torch" in refused.value.message and fake_vllm.loads() == []


# --- modules vLLM applies -----------------------------------------------------------------------------------


WRONG_PREFIX = [
    f"base_model.model.transformer.h.{layer}.attn.q_proj.lora_{part}.weight" for layer in (0, 1) for part in "AB"
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("tensors", "targets", "offending"),
    [
        pytest.param(WRONG_PREFIX, ["q_proj"], "transformer.h.0.attn.q_proj", id="wrong-prefix"),
        pytest.param(
            [f"base_model.model.model.layers.0.mlp.dense_h_to_4h.lora_{p}.weight" for p in "AB"],
            ["dense_h_to_4h"],
            "dense_h_to_4h",
            id="module-not-applied",
        ),
        pytest.param(
            [f"base_model.model.lm_head.lora_{p}.weight" for p in "AB"], ["lm_head"], "lm_head", id="embedding"
        ),
        pytest.param(
            [f"base_model.model.model.layers.7.self_attn.q_proj.lora_{p}.weight" for p in "AB"],
            ["q_proj"],
            "layer 7",
            id="layer-out-of-range",
        ),
        pytest.param(
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"], ["q_proj"], "lora_B missing", id="no-B"
        ),
    ],
)
async def test_adapter_vllm_would_not_apply_is_refused_before_load_with_names(
    start_agent, fake_vllm, tmp_path, new_adapter, llama_dir, list_tree, tensors, targets, offending
) -> None:
    folder, digest = new_adapter(tmp_path / "adapter", tensors=tensors, target_modules=targets)
    running = await start_agent(base_model_dir=llama_dir)
    with pytest.raises(AgentError) as refused:
        await running.client.put("bad", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "IncompatibleModules")
    assert offending in refused.value.message and "LlamaForCausalLM" in refused.value.message
    assert fake_vllm.loads() == [] and fake_vllm.completions == []
    assert list_tree(running.config.adapters_dir / "bad") == []
    [record] = await running.client.list()
    assert (record.state, record.reason) == ("Failed", "IncompatibleModules")


@pytest.mark.asyncio
async def test_matching_adapter_is_compatible_with_the_base_found_through_vllms_model_root(
    start_agent, fake_vllm, adapter, llama_dir
) -> None:
    folder, digest = adapter
    fake_vllm.root = str(llama_dir)  # no --base-model-dir: vLLM's /v1/models names the folder
    running = await start_agent()
    record = await running.client.put("good", uri(folder), digest)
    assert (record.state, record.compatibility, record.rank) == ("Loaded", "Compatible", 8)
    assert "8 tensors on 4 modules apply to LlamaForCausalLM" in str(record.compatibility_message)


@pytest.mark.asyncio
async def test_unknown_architecture_passes_through_or_is_refused_by_policy(
    start_agent, fake_vllm, tmp_path, new_adapter
) -> None:
    model = tmp_path / "models" / "phi"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["Phi3ForCausalLM"]}))
    folder, digest = new_adapter(tmp_path / "adapter", tensors=WRONG_PREFIX)
    allowing = await start_agent(base_model_dir=model)
    record = await allowing.client.put("a", uri(folder), digest)
    assert (record.state, record.compatibility) == ("Loaded", "UnknownArchitecture")
    assert "Phi3ForCausalLM" in str(record.compatibility_message)
    await allowing.client.delete("a")

    refusing = await start_agent(
        base_model_dir=model, unknown_architecture="refuse", adapters_dir=tmp_path / "adapters-2"
    )
    with pytest.raises(AgentError) as refused:
        await refusing.client.put("a", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "UnknownArchitecture")


LLAMA = BaseModel("LlamaForCausalLM", 2, ARCHITECTURES["LlamaForCausalLM"], "test")


@pytest.mark.parametrize(
    ("targets", "passes"),
    [
        ("all-linear", True),
        (r".*\.(q_proj|v_proj)", True),
        (r"model\.layers\.\d+\.self_attn\.v_proj", True),
        (r".*\.query_key_value", False),
        (["q_proj", "not_a_module"], True),  # PEFT skips a listed target the model lacks; the tensors decide
        (["query_key_value", "dense"], False),
    ],
)
def test_target_modules_overlap(tmp_path, new_adapter, targets, passes) -> None:
    folder, _ = new_adapter(tmp_path / "adapter", target_modules=targets)
    if passes:
        assert check_adapter(folder, LLAMA).status == "Compatible"
    else:
        with pytest.raises(ArtifactRejected) as refused:
            check_adapter(folder, LLAMA)
        assert refused.value.reason == "IncompatibleModules"


def test_embedding_lora_passes_only_when_enabled(tmp_path, new_adapter) -> None:
    tensors = [f"base_model.model.lm_head.lora_{p}.weight" for p in "AB"]
    folder, _ = new_adapter(tmp_path / "adapter", tensors=tensors, target_modules=["lm_head"])
    assert check_adapter(folder, LLAMA, embeddings=True).status == "Compatible"
    with pytest.raises(ArtifactRejected):
        check_adapter(folder, LLAMA)


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"\xff" * 64, b"\x04\x00\x00\x00\x00\x00\x00\x00[1]x"])
def test_weights_that_are_not_safetensors_are_refused(tmp_path, new_adapter, data) -> None:
    folder, _ = new_adapter(tmp_path / "adapter")
    (folder / "adapter_model.safetensors").write_bytes(data)
    with pytest.raises(ArtifactRejected) as refused:
        check_adapter(folder, LLAMA)
    assert refused.value.reason == "InvalidWeights"


def test_new_record_fields_are_optional_and_unknown_answer_fields_ignored() -> None:
    """An operator reads records of agents older (no new fields) and newer (fields it does not know)."""
    old = {"name": "a", "servedName": "a", "digest": "0" * 64, "uri": "file:///x", "state": "Loaded"}
    assert AdapterRecord.model_validate(old).effective is None
    newer = AdapterRecord.model_validate({**old, "effective": False, "someFutureField": 1})
    assert newer.effective is False
    # Requests stay strict: a PUT cannot smuggle fields (credentials) the agent does not know.
    with pytest.raises(ValueError):
        PutAdapter.model_validate({"uri": "file:///x", "digest": "0" * 64, "awsSecretAccessKey": "x"})
    assert "convertPickle" not in PutAdapter(uri="file:///x", digest="0" * 64).wire()
