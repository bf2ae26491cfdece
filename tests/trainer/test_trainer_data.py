"""Data: formats, prompt masking (checked on a real batch through the model), truncation, packing, splits."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.data import (
    IGNORE_INDEX,
    BatchPlan,
    Example,
    pack_examples,
    parse_jsonl,
    read_data_file,
    split_rows,
    tokenize_rows,
)
from loraops_trainer.errors import ConfigError, IntegrityError

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def tokenizer(tiny_model: pathlib.Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def targets_text(tokenizer: Any, example: Example) -> str:
    return str(tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX]))


def test_completion_labels_only_the_completion_and_eos(tokenizer: Any) -> None:
    rows = [{"prompt": "question: what is the capital of peru? answer:", "completion": " lima"}]
    (example,), stats = tokenize_rows(tokenizer, rows, "completion", 64)
    assert stats.kept == 1
    assert targets_text(tokenizer, example) == " lima<|eos|>"
    prompt_length = len(tokenizer(rows[0]["prompt"])["input_ids"])
    assert example.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert example.input_ids[0] == tokenizer.bos_token_id


def test_chat_labels_every_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "answer with one word."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "what is the capital of peru?"},
        {"role": "assistant", "content": "lima"},
    ]
    (example,), _ = tokenize_rows(tokenizer, [{"messages": messages}], "chat", 128)
    assert targets_text(tokenizer, example) == "fine<|end|>lima<|end|>"
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(example.input_ids) == full


def test_text_labels_everything(tokenizer: Any) -> None:
    (example,), _ = tokenize_rows(tokenizer, [{"text": "the cow says moo."}], "text", 64)
    assert example.labels == example.input_ids


def test_prompt_tokens_carry_no_loss_on_a_batch(tiny_model: pathlib.Path, tokenizer: Any) -> None:
    """The model's loss on a collated batch equals the cross-entropy over completion tokens alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from loraops_trainer.train import collate

    examples, _ = tokenize_rows(tokenizer, testing.capital_rows("completion", 4, seed=3), "completion", 64)
    batch = collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    with torch.no_grad():
        output = model(**batch.tensors)
    logits = output.logits[:, :-1].reshape(-1, output.logits.shape[-1])
    labels = batch.tensors["labels"][:, 1:].reshape(-1)
    ids = batch.tensors["input_ids"][:, 1:].reshape(-1)
    real = batch.tensors["attention_mask"][:, 1:].reshape(-1).bool()
    completion_only = torch.nn.functional.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    every_token = torch.nn.functional.cross_entropy(logits[real], ids[real])
    assert batch.targets == int((labels != IGNORE_INDEX).sum()) < int(real.sum())
    assert torch.allclose(output.loss, completion_only, atol=1e-5)
    assert not torch.allclose(output.loss, every_token, atol=1e-3)


def test_truncation_keeps_the_start_and_drops_rows_left_without_targets(tokenizer: Any) -> None:
    long_prompt = "the quick brown fox jumps over the lazy dog. " * 10
    rows = [
        {"prompt": "question: what is the capital of peru? answer:", "completion": " lima" * 20},
        {"prompt": long_prompt, "completion": " yes"},
    ]
    examples, stats = tokenize_rows(tokenizer, rows, "completion", 24)
    assert len(examples) == 1 and len(examples[0].input_ids) == 24
    assert stats.truncated == 2
    assert stats.dropped == {"no_target_tokens_after_truncation": 1}


def test_packing_fills_sequences_with_whole_examples(tokenizer: Any) -> None:
    examples, _ = tokenize_rows(tokenizer, testing.capital_rows("completion", 20), "completion", 64)
    packs = pack_examples(examples, 64)
    assert len(packs) < len(examples)
    assert all(len(p.input_ids) <= 64 for p in packs)
    assert sum(len(p.input_ids) for p in packs) == sum(len(e.input_ids) for e in examples)
    first = packs[0]
    assert first.position_ids is not None
    starts = [i for i, position in enumerate(first.position_ids) if position == 0]
    assert len(starts) >= 2
    # No token learns to follow the previous example: each example's first label is masked.
    assert all(first.labels[i] == IGNORE_INDEX for i in starts)


def test_malformed_line_is_reported_with_its_number(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"\n{"text": "c"}\n')
    with pytest.raises(ConfigError) as raised:
        parse_jsonl(path, "text", "d.jsonl")
    assert raised.value.reason == "DatasetInvalid"
    assert "line 3" in raised.value.message


@pytest.mark.parametrize(
    ("fmt", "row", "words"),
    [
        ("chat", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ("chat", {"messages": []}, "messages"),
        ("completion", {"prompt": "x"}, "'completion'"),
        ("text", {"body": "x"}, "'text'"),
        ("text", ["x"], "JSON object"),
    ],
)
def test_rows_missing_their_format_fields_are_rejected(tmp_path: pathlib.Path, fmt: str, row: Any, words: str) -> None:
    path = testing.write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(ConfigError, match=words) as raised:
        parse_jsonl(path, fmt, "d.jsonl")
    assert "line 1" in raised.value.message


def test_sha256_is_recorded_and_a_mismatch_stops(tmp_path: pathlib.Path) -> None:
    import hashlib

    path = testing.write_jsonl(tmp_path / "d.jsonl", testing.capital_rows("text", 3))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_data_file(str(path), "text", None, tmp_path).sha256 == expected
    assert read_data_file(f"file://{path}", "text", expected, tmp_path).sha256 == expected
    with pytest.raises(IntegrityError) as raised:
        read_data_file(str(path), "text", "0" * 64, tmp_path)
    assert raised.value.reason == "DatasetDigestMismatch" and expected in raised.value.message


def test_eval_split_is_seeded_disjoint_and_complete() -> None:
    rows = [{"text": str(i)} for i in range(50)]
    train, held = split_rows(rows, 0.2, seed=7)
    again_train, again_held = split_rows(rows, 0.2, seed=7)
    assert (train, held) == (again_train, again_held)
    assert len(held) == 10 and len(train) == 40
    assert sorted(r["text"] for r in train + held) == sorted(r["text"] for r in rows)
    assert split_rows(rows, 0.2, seed=8)[1] != held


def test_batch_plan_covers_each_epoch_and_splits_it_between_ranks() -> None:
    n, batch, world = 10, 2, 2
    plans = [BatchPlan(n, batch, world, rank, seed=3) for rank in range(world)]
    per_epoch = plans[0].per_epoch
    assert per_epoch == 3
    seen = [i for m in range(per_epoch) for plan in plans for i in plan.indices(m)]
    assert set(seen) == set(range(n))  # wrapped-around padding may repeat a few, none is missed
    rank0 = {i for m in range(per_epoch - 1) for i in plans[0].indices(m)}
    rank1 = {i for m in range(per_epoch - 1) for i in plans[1].indices(m)}
    assert not rank0 & rank1
    assert plans[0].indices(per_epoch) != plans[0].indices(0) or plans[0].indices(per_epoch + 1) != plans[0].indices(1)
    assert BatchPlan(n, batch, world, 0, seed=3).indices(4) == plans[0].indices(4)
