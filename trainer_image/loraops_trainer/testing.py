"""Helpers for tests and benchmarks: a tiny Llama with its tokenizer, built offline in seconds, and synthetic
datasets with a pattern a model can learn in a few dozen steps.

The tiny model satisfies vLLM's CPU constraints (head_dim 32, untied embeddings, see NOTES), so the e2e tier can
serve it and adapters trained on it.
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Iterable
from typing import Any

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# A fixed mapping a model can memorise: the learnable pattern of the synthetic datasets.
CAPITALS = {
    "france": "paris",
    "italy": "rome",
    "spain": "madrid",
    "japan": "tokyo",
    "egypt": "cairo",
    "peru": "lima",
    "kenya": "nairobi",
    "norway": "oslo",
}
ANIMALS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "owl": "hoot", "sheep": "baa"}


def corpus() -> list[str]:
    """Sentences the tokenizer learns its merges from (covering the synthetic datasets' words)."""
    lines = [f"what is the capital of {c}? the capital of {c} is {p}." for c, p in CAPITALS.items()]
    lines += [f"the {a} says {s}. a {a} always says {s}!" for a, s in ANIMALS.items()]
    lines += [
        "the quick brown fox jumps over the lazy dog.",
        "hello world, how are you today? fine, thank you.",
        "answer with one word. question: answer: yes no maybe 0 1 2 3 4 5 6 7 8 9",
        '{"key": "value", "list": [1, 2, 3]}',
    ]
    return lines * 4


def build_tokenizer(directory: pathlib.Path | None = None, vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer with BOS/EOS/PAD and a chat template, trained on `corpus()`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus(), trainer)
    bos_id = core.token_to_id("<|bos|>")
    core.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if directory is not None:
        tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_tiny_llama(
    directory: pathlib.Path | str,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.2,
    seed: int = 0,
) -> pathlib.Path:
    """Save a random Llama and its tokenizer into `directory` (created). head_dim is 32, as vLLM requires.

    The weights are drawn wider than Llama's default (0.02): with the output head frozen, a default-initialised
    tiny model caps every logit near ±1, and no adapter could lower the loss much. At 0.2 a LoRA learns the
    synthetic datasets in a few dozen steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        head_dim=hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    # A chat turn ends with <|end|>: generation must stop there as well as at EOS.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    return directory


def capital_rows(fmt: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` rows asking for a capital, in format `fmt`; the answer is a fixed function of the question."""
    rng = random.Random(seed)
    countries = list(CAPITALS)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        country = rng.choice(countries)
        question, answer = f"what is the capital of {country}?", CAPITALS[country]
        if fmt == "chat":
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            if rng.random() < 0.3:
                messages.insert(0, {"role": "system", "content": "answer with one word."})
            rows.append({"messages": messages})
        elif fmt == "completion":
            rows.append({"prompt": f"question: {question} answer:", "completion": f" {answer}"})
        elif fmt == "text":
            rows.append({"text": f"the capital of {country} is {answer}."})
        else:
            raise ValueError(f"unknown format {fmt}")
    return rows


def golden_rows(n: int | None = None) -> list[dict[str, Any]]:
    """A golden set for `evaluate` over the capitals, alternating prompt and chat rows, with slices."""
    rows: list[dict[str, Any]] = []
    for index, (country, capital) in enumerate(CAPITALS.items()):
        if index % 2:
            rows.append(
                {
                    "prompt": f"question: what is the capital of {country}? answer:",
                    "expected": capital,
                    "slice": "prompt",
                }
            )
        else:
            rows.append(
                {
                    "messages": [{"role": "user", "content": f"what is the capital of {country}?"}],
                    "expected": capital,
                    "slice": "chat",
                }
            )
    return rows if n is None else rows[:n]


def write_jsonl(path: pathlib.Path | str, rows: Iterable[dict[str, Any]]) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def train_config(
    model_dir: pathlib.Path | str,
    dataset_path: pathlib.Path | str,
    output_path: pathlib.Path | str,
    /,
    *,
    fmt: str = "completion",
    method: str = "lora",
    max_steps: int = 40,
    **overrides: Any,
) -> dict[str, Any]:
    """A small, fast training config (as the wire form: camelCase) for the tiny model. `overrides` are
    merged section by section, e.g. `hyperparameters={"learningRate": 1e-2}`."""
    config: dict[str, Any] = {
        "baseModel": {"name": "tiny-llama", "path": str(model_dir)},
        "dataset": {"uri": str(dataset_path), "format": fmt, "version": "test-1"},
        "method": method,
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": "all-linear"},
        "hyperparameters": {
            "maxSteps": max_steps,
            "learningRate": 1e-2,
            "scheduler": "constant",
            "warmupSteps": 0,
            "batchSize": 8,
            "maxSeqLength": 64,
            "seed": 1,
        },
        "checkpoint": {"intervalSteps": 1000},
        "progress": {"intervalSteps": 1},
        "output": {"uri": str(output_path)},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
