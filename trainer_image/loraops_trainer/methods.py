"""The base model and the LoRA variants: where the weights come from, what can be adapted, and how the
trainable parameters are grouped for the optimizer.

Shape checks (target modules, sequence length) run on a weightless copy of the model built on the `meta`
device, so a wrong module name fails in seconds even for a 70B model.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import torch

from .config import ALL_LINEAR, BaseModelConfig, TrainConfig
from .errors import ConfigError, IntegrityError, RuntimeFailure
from .storage import fetch_dir, is_s3, local_path


def _from_hub(repo: str, revision: str | None) -> pathlib.Path:
    """A hub snapshot (only where the cluster reaches the hub, or the image's cache holds it)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return pathlib.Path(snapshot_download(repo, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError, LocalEntryNotFoundError) as error:
        raise ConfigError(
            "BaseModelNotFound",
            f"{repo}: not a local path and not available from the hub ({type(error).__name__}); "
            "set baseModel.path or baseModel.uri",
        ) from None
    except Exception as error:
        raise RuntimeFailure("BaseModelFetchFailed", f"{repo}: {error}") from None


def resolve_base_model(base: BaseModelConfig, workdir: pathlib.Path) -> pathlib.Path:
    """A local directory with the base model's weights, config and tokenizer."""
    if base.path:
        path = pathlib.Path(base.path)
    elif base.uri and base.uri.startswith("hf://"):
        return _from_hub(base.uri.removeprefix("hf://"), base.revision)
    elif base.uri and is_s3(base.uri):
        return fetch_dir(base.uri, workdir, reason_missing="BaseModelNotFound")
    elif base.uri:
        path = local_path(base.uri)
    else:
        return _from_hub(base.name, base.revision)
    if not (path / "config.json").is_file():
        raise ConfigError("BaseModelNotFound", f"{path}: no model there (config.json missing)")
    return path


def verify_base_digest(path: pathlib.Path, declared: str) -> None:
    from .manifest import hash_directory

    digest, _ = hash_directory(path)
    if digest != declared:
        raise IntegrityError(
            "BaseModelDigestMismatch", f"{path}: weights digest is {digest}, the config declares {declared}"
        )


@dataclass
class ModelFacts:
    """What the shape checks need, read without loading any weight."""

    model_type: str
    linear_names: list[str]
    max_positions: int | None


def inspect_model(path: pathlib.Path) -> ModelFacts:
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as error:
        raise ConfigError(
            "BaseModelInvalid", f"{path}: not a causal language model transformers can load ({error})"
        ) from None
    names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in skeleton.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D)
        }
    )
    max_positions = None
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            max_positions = value
            break
    return ModelFacts(model_type=str(config.model_type), linear_names=names, max_positions=max_positions)


def check_against_model(config: TrainConfig, facts: ModelFacts) -> list[str]:
    """The target modules as resolved for this model; raises on a module the model does not have or a
    sequence length beyond its positions."""
    targets = config.lora.target_modules
    if targets != ALL_LINEAR:
        missing = [name for name in targets if name not in facts.linear_names]
        if missing:
            raise ConfigError(
                "TargetModuleNotFound",
                f"lora.targetModules {missing} not in the model ({facts.model_type}); "
                f"linear modules available: {', '.join(facts.linear_names)} (or all-linear)",
            )
        resolved = list(targets)
    else:
        resolved = [name for name in facts.linear_names if name != "lm_head"]
    length = config.hyperparameters.max_seq_length
    if facts.max_positions is not None and length > facts.max_positions:
        raise ConfigError(
            "SequenceTooLong",
            f"hyperparameters.maxSeqLength {length} exceeds the model's maximum of {facts.max_positions} positions",
        )
    return resolved


def check_qlora_dependencies() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:
        raise ConfigError(
            "MissingDependency",
            f"method qlora needs bitsandbytes, which cannot be imported here ({error}); "
            "use the trainer image or `pip install bitsandbytes`",
        ) from None


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_peft_model(config: TrainConfig, path: pathlib.Path, device: torch.device, dtype: torch.dtype) -> Any:
    """The base model (4-bit for qlora) with a fresh, seeded LoRA of the configured variant."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if device.type == "cuda":
            kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    gradient_checkpointing = config.hyperparameters.gradient_checkpointing
    if config.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    shape = config.lora
    lora_config = LoraConfig(
        r=shape.rank,
        lora_alpha=shape.alpha,  # type: ignore[arg-type]  # peft annotates int, uses it as a float
        lora_dropout=shape.dropout,
        target_modules=shape.target_modules,
        use_dora=config.method == "dora",
        use_rslora=config.method == "rslora",
        bias="none",
        task_type="CAUSAL_LM",
    )
    # Every rank draws the same initial A matrices: the seed is set right before they are created.
    torch.manual_seed(config.hyperparameters.seed)
    peft_model = get_peft_model(model, lora_config)
    for adapter_config in peft_model.peft_config.values():
        # vLLM and readers of adapter_config.json should see the served name, not a pod-local path.
        adapter_config.base_model_name_or_path = config.base_model.name
        adapter_config.revision = config.base_model.revision
    if config.method != "qlora":
        peft_model.to(device)
    return peft_model


def trainable_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def is_lora_b(name: str) -> bool:
    return ".lora_B." in name or ".lora_embedding_B." in name


def parameter_groups(
    model: Any, learning_rate: float, lora_plus_ratio: float | None, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer groups. With LoRA+ (Hayou et al., 2024) the B matrices get `ratio` × the learning rate of
    everything else (A matrices, DoRA magnitudes); group 0 is always the base rate."""
    parameters = trainable_parameters(model)
    if not parameters:
        raise ConfigError("NothingToTrain", "the LoRA configuration leaves no trainable parameter")
    if lora_plus_ratio is None:
        return [{"params": list(parameters.values()), "lr": learning_rate, "weight_decay": weight_decay, "name": "all"}]
    base = [p for n, p in parameters.items() if not is_lora_b(n)]
    fast = [p for n, p in parameters.items() if is_lora_b(n)]
    return [
        {"params": base, "lr": learning_rate, "weight_decay": weight_decay, "name": "lora_A"},
        {"params": fast, "lr": learning_rate * lora_plus_ratio, "weight_decay": weight_decay, "name": "lora_B"},
    ]
