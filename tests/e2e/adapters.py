"""Real LoRA adapters for the tiny model, different from the base and from each other."""

from __future__ import annotations

import pathlib


def make_adapter(
    base: pathlib.Path, out: pathlib.Path, seed: int, rank: int = 8, *, random_init: bool = True
) -> pathlib.Path:
    """A peft LoRA with random A and B (`init_lora_weights=False`): PEFT's default (B = 0) would answer exactly
    like the base model, and an e2e test could not tell who answered. `random_init=False` makes exactly that
    default-init adapter, for the tests of the effect probe."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=4 * rank, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=not random_init
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out))
    return out
