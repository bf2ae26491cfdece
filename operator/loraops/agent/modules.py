"""Will vLLM apply this adapter? Tensor names and target modules against the served base model, before load.

vLLM 0.32 matches an adapter's tensors to its layers by the last name component only when it validates, and
by the full path when it applies them: a tensor named `base_model.model.transformer.h.0.attn.q_proj.lora_A`
passes validation, loads with 200, and changes nothing (vLLM issue 34186; NOTES). So the agent checks the
whole path itself, against a small table of the layouts vLLM uses per architecture (read from the model
folder's config.json). Architectures not in the table pass through unchecked, or are refused when the agent
runs with `--unknown-architecture refuse`; the effect probe after load still catches an adapter that does
nothing.

The safetensors header is read by hand (8-byte little-endian length + JSON): no torch, no tensor data read.
"""

from __future__ import annotations

import json
import pathlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from loraops.agent.errors import ArtifactRejected
from loraops.agent.formats import WEIGHTS_NAME, listed

MAX_HEADER = 100 << 20
"""A header names every tensor with its shape; 100 MiB is far above any adapter's and bounds the read."""

_LLAMA_LIKE: Mapping[str, str] = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


@dataclass(frozen=True)
class Layout:
    """Where vLLM applies LoRA in one architecture: `<layers>.<N>.<parent>.<module>`, plus embeddings."""

    modules: Mapping[str, str]
    """module name → its parent inside a decoder layer (vLLM packs q/k/v and gate/up but keeps their names)."""
    layers_path: str = "model.layers"
    embeddings: Mapping[str, str] = field(
        default_factory=lambda: {"embed_tokens": "model.embed_tokens", "lm_head": "lm_head"}
    )
    """Applied only when vLLM is started for it (the agent's `--lora-embeddings`)."""


ARCHITECTURES: Mapping[str, Layout] = {
    # The Llama layout: vLLM's own module tree for these uses the same names as the HF checkpoints.
    name: Layout(modules=_LLAMA_LIKE)
    for name in (
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
    )
}


@dataclass(frozen=True)
class BaseModel:
    """What the agent knows of the served base model."""

    architecture: str | None
    layers: int | None
    layout: Layout | None
    source: str
    """Where it was read from (for messages)."""


def read_base_model(folder: pathlib.Path | None, source: str) -> BaseModel:
    """The base model from its folder's config.json; unknown when the folder or its config is not readable."""
    if folder is None:
        return BaseModel(None, None, None, source)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return BaseModel(None, None, None, source)
    architectures = config.get("architectures") if isinstance(config, dict) else None
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    return BaseModel(
        architecture=str(architecture) if architecture else None,
        layers=layers if isinstance(layers, int) and layers > 0 else None,
        layout=ARCHITECTURES.get(str(architecture)),
        source=source,
    )


def read_safetensors_header(path: pathlib.Path) -> dict[str, object]:
    """Tensor name → its header entry; refuses a file that is not safetensors (`InvalidWeights`)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            (length,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if length > min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} does not fit the file ({size} bytes)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ArtifactRejected("InvalidWeights", f"{path.name} is not a safetensors file: {error}") from None
    if not isinstance(header, dict):
        raise ArtifactRejected("InvalidWeights", f"{path.name}: the safetensors header is not a JSON object")
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


@dataclass(frozen=True)
class LoraTensor:
    module: str
    """The module path the tensor applies to, PEFT's `base_model.model.` prefix removed."""
    part: str
    """A or B."""


_PARTS = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_embedding_A": "A", ".lora_embedding_B": "B"}


def parse_tensor_name(name: str) -> LoraTensor | None:
    """`base_model.model.<module>.lora_A.weight` → (module, "A"); None for anything that is not a LoRA tensor."""
    # vLLM strips this PEFT prefix when present and keeps names without it as they are.
    stripped = name.removeprefix("base_model.model.")
    for suffix, part in _PARTS.items():
        if stripped.endswith(suffix) and len(stripped) > len(suffix):
            return LoraTensor(stripped[: -len(suffix)], part)
    return None


@dataclass(frozen=True)
class Compatibility:
    status: str
    """`Compatible`, or `UnknownArchitecture` (module names not checked)."""
    message: str
    rank: int | None
    target_modules: tuple[str, ...]


def _read_config(root: pathlib.Path) -> dict[str, object]:
    try:
        config = json.loads((root / "adapter_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactRejected("InvalidAdapter", "adapter_config.json is missing") from None
    except (OSError, ValueError) as error:
        raise ArtifactRejected("InvalidAdapter", f"adapter_config.json is not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise ArtifactRejected("InvalidAdapter", "adapter_config.json is not a JSON object")
    return config


def _targets(config: Mapping[str, object]) -> tuple[list[str], str | None]:
    """(target names, regex) from `target_modules`: PEFT takes a list of name suffixes or one regex string."""
    value = config.get("target_modules")
    if isinstance(value, list):
        return [str(v) for v in value], None
    if isinstance(value, str):
        return [], value
    return [], None


def _supported(layout: Layout, layers: int, embeddings: bool) -> list[str]:
    """Every full module path vLLM applies LoRA to (one decoder layer is enough when the count is unknown)."""
    paths = [
        f"{layout.layers_path}.{index}.{parent}.{module}"
        for index in range(layers)
        for module, parent in layout.modules.items()
    ]
    if embeddings:
        paths += list(layout.embeddings.values())
    return paths


def _peft_matches(target: str, module_path: str) -> bool:
    """PEFT's rule for a list entry: the module's full name equals it or ends with `.<target>`."""
    return module_path == target or module_path.endswith(f".{target}")


def check_adapter(
    root: pathlib.Path, base: BaseModel, *, embeddings: bool = False, refuse_unknown: bool = False
) -> Compatibility:
    """Refuse (`IncompatibleModules`, names listed) an adapter vLLM would load but not apply to `base`."""
    config = _read_config(root)
    rank = config.get("r")
    targets, pattern = _targets(config)
    shown_targets = tuple(targets) if pattern is None else (pattern,)
    rank_value = rank if isinstance(rank, int) else None
    if base.layout is None:
        what = (
            f"architecture {base.architecture!r}" if base.architecture else f"no readable config.json ({base.source})"
        )
        message = f"base model: {what}; the agent has no module table for it, so module names were not checked"
        if refuse_unknown:
            raise ArtifactRejected("UnknownArchitecture", message)
        return Compatibility("UnknownArchitecture", message, rank_value, shown_targets)

    layout = base.layout
    weights = root / WEIGHTS_NAME
    if not weights.is_file():
        raise ArtifactRejected("InvalidAdapter", f"{WEIGHTS_NAME} is missing")
    names = sorted(read_safetensors_header(weights))
    if not names:
        raise ArtifactRejected("IncompatibleModules", f"{WEIGHTS_NAME} holds no tensors")

    module_re = re.compile(
        rf"^{re.escape(layout.layers_path)}\.(\d+)\.(?P<parent>[A-Za-z0-9_]+)\.(?P<module>[A-Za-z0-9_]+)$"
    )
    allowed_embeddings = set(layout.embeddings.values()) if embeddings else set()
    problems: list[str] = []
    parts: dict[str, set[str]] = {}
    for name in names:
        tensor = parse_tensor_name(name)
        if tensor is None:
            problems.append(f"{name} (not a LoRA tensor)")
            continue
        parts.setdefault(tensor.module, set()).add(tensor.part)
        if tensor.module in allowed_embeddings:
            continue
        if tensor.module in layout.embeddings.values():
            problems.append(f"{name} (embedding LoRA: applied only when vLLM and the agent enable it)")
            continue
        match = module_re.match(tensor.module)
        if match is None:
            problems.append(f"{name} (prefix: expected {layout.layers_path}.N.<parent>.<module>)")
            continue
        index, parent, module = int(match.group(1)), match.group("parent"), match.group("module")
        if layout.modules.get(module) != parent:
            problems.append(f"{name} ({parent}.{module} is not a module vLLM applies LoRA to in {base.architecture})")
        elif base.layers is not None and index >= base.layers:
            problems.append(f"{name} (layer {index}: the base model has {base.layers})")
    problems += [
        f"{module} (lora_{'B' if have == {'A'} else 'A'} missing)" for module, have in parts.items() if len(have) == 1
    ]
    if problems:
        raise ArtifactRejected(
            "IncompatibleModules",
            f"{len(problems)} tensor(s) would load but not apply to {base.architecture}: {listed(problems)}",
        )

    supported = _supported(layout, base.layers or 1, embeddings)
    if pattern is not None and pattern != "all-linear":
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ArtifactRejected("InvalidAdapter", f"target_modules regex {pattern!r}: {error}") from None
        if not any(regex.fullmatch(path) for path in supported):
            raise ArtifactRejected(
                "IncompatibleModules", f"target_modules {pattern!r} matches no module vLLM applies LoRA to"
            )
    applied = [t for t in targets if any(_peft_matches(t, path) for path in supported)]
    if targets and not applied:
        raise ArtifactRejected(
            "IncompatibleModules",
            f"no target module is one vLLM applies LoRA to in {base.architecture}: {listed(targets)} "
            f"(applied: {', '.join(layout.modules)})",
        )
    message = f"{len(names)} tensors on {len(parts)} modules apply to {base.architecture}"
    ignored = [t for t in targets if t not in applied]
    if ignored:
        # PEFT itself skips a listed target the model lacks; the tensors (checked above) are what vLLM applies.
        message += f"; target_modules not applied (no tensors expected for them): {listed(ignored)}"
    return Compatibility("Compatible", message, rank_value, shown_targets)
