"""Training data: JSONL in three formats, tokenised with loss only on what the model should learn.

Reading and checking the file (existence, sha256, JSON per line, fields per format) needs no tokenizer and no
torch, so bad data fails in seconds, before any model is loaded.

Formats (one JSON object per line; blank lines are skipped):

- `chat`: `{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}`, rendered with
  the tokenizer's chat template; labels on the assistant turns only.
- `completion`: `{"prompt": "...", "completion": "..."}`; labels on the completion (and the EOS) only.
- `text`: `{"text": "..."}`; labels on every token.
"""

from __future__ import annotations

import json
import math
import pathlib
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, IntegrityError
from .manifest import file_sha256
from .storage import fetch_file

IGNORE_INDEX = -100
"""Label value that the loss skips (PyTorch's cross-entropy default)."""

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass
class Example:
    """One training sequence. `position_ids` is set for packed sequences (restarting at 0 per example)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None

    @property
    def target_tokens(self) -> int:
        # The first label is never predicted (nothing precedes it), as in the model's shifted loss.
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class DataFile:
    """A JSONL file read and checked: its rows, and the facts the manifest records."""

    uri: str
    sha256: str
    rows: list[dict[str, Any]]


@dataclass
class TokenStats:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "kept": self.kept, "truncated": self.truncated, "dropped": dict(self.dropped)}


def _check_row(row: Any, fmt: str, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ConfigError("DatasetInvalid", f"{where}: expected a JSON object, got {type(row).__name__}")
    if fmt == "chat":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ConfigError("DatasetInvalid", f"{where}: 'messages' must be a non-empty list (format chat)")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise ConfigError("DatasetInvalid", f"{where}: messages[{index}] is not an object")
            role, content = message.get("role"), message.get("content")
            if role not in CHAT_ROLES:
                raise ConfigError(
                    "DatasetInvalid",
                    f"{where}: messages[{index}].role {role!r} is not one of {', '.join(sorted(CHAT_ROLES))}",
                )
            if not isinstance(content, str):
                raise ConfigError("DatasetInvalid", f"{where}: messages[{index}].content must be a string")
    elif fmt == "completion":
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str):
                raise ConfigError("DatasetInvalid", f"{where}: '{key}' must be a string (format completion)")
    elif fmt == "text":
        if not isinstance(row.get("text"), str):
            raise ConfigError("DatasetInvalid", f"{where}: 'text' must be a string (format text)")
    else:  # pragma: no cover - the config's Literal keeps other values out
        raise ConfigError("InvalidConfig", f"unknown dataset format {fmt!r}")
    return row


def iter_jsonl(path: pathlib.Path, name: str, reason: str) -> Iterator[tuple[str, Any]]:
    """(`<name> line N`, value) for every non-blank line; a line that is not JSON raises ConfigError(`reason`)
    with its number. File errors (OSError, UnicodeDecodeError) are the caller's to word."""
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{name} line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(reason, f"{where}: not valid JSON ({error.msg})") from None


def parse_jsonl(path: pathlib.Path, fmt: str, name: str) -> list[dict[str, Any]]:
    """Every non-blank line as a checked row; the first bad line stops the run with its number."""
    try:
        return [_check_row(row, fmt, where) for where, row in iter_jsonl(path, name, "DatasetInvalid")]
    except UnicodeDecodeError as error:
        raise ConfigError("DatasetInvalid", f"{name}: not UTF-8 text ({error})") from None
    except OSError as error:
        raise ConfigError("DatasetNotReadable", f"{name}: {error.strerror or error}") from None


def read_data_file(uri: str, fmt: str, declared_sha256: str | None, workdir: pathlib.Path) -> DataFile:
    """Fetch, hash, check against the declared sha256, then parse."""
    path = fetch_file(uri, workdir, reason_missing="DatasetNotFound")
    digest = file_sha256(path)
    if declared_sha256 is not None and digest != declared_sha256:
        raise IntegrityError(
            "DatasetDigestMismatch", f"{uri}: sha256 is {digest}, the config declares {declared_sha256}"
        )
    rows = parse_jsonl(path, fmt, uri)
    if not rows:
        raise ConfigError("DatasetEmpty", f"{uri}: no rows")
    return DataFile(uri=uri, sha256=digest, rows=rows)


def split_rows(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): a seeded random `fraction` of the rows (at least one) held out."""
    if len(rows) < 2:
        raise ConfigError("DatasetEmpty", f"evalSplit needs at least 2 rows, the dataset has {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    held = set(order[:n_eval])
    train = [row for index, row in enumerate(rows) if index not in held]
    evaluation = [row for index, row in enumerate(rows) if index in held]
    return train, evaluation


def _encode(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _chat_example(tokenizer: Any, messages: list[dict[str, Any]]) -> Example | None:
    """Labels on assistant turns. Each turn's tokens are found by rendering the conversation up to it: the
    tokens between "up to the turn, with the generation prompt" and "up to and including the turn". A turn
    whose rendering is not a prefix of the whole (templates that rewrite earlier turns) gets no labels
    rather than wrong ones."""

    def render(part: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=generation_prompt)
        return _encode(tokenizer, text, special=False)

    full = render(messages, False)
    labels = [IGNORE_INDEX] * len(full)
    any_target = False
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(messages[:index], True)) if index else 0
        through = render(messages[: index + 1], False)
        if full[: len(through)] != through or start > len(through):
            continue
        for position in range(start, len(through)):
            labels[position] = full[position]
            any_target = True
    return Example(full, labels) if any_target else None


def build_example(tokenizer: Any, row: dict[str, Any], fmt: str) -> Example | None:
    """The untruncated example of a row, or None when it has nothing to learn."""
    eos = tokenizer.eos_token_id
    if fmt == "chat":
        return _chat_example(tokenizer, row["messages"])
    if fmt == "completion":
        prompt = _encode(tokenizer, row["prompt"], special=True)
        completion = _encode(tokenizer, row["completion"], special=False)
        if eos is not None:
            completion.append(eos)
        if not row["completion"]:
            return None
        return Example(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)
    ids = _encode(tokenizer, row["text"], special=True)
    if eos is not None:
        ids.append(eos)
    if not row["text"]:
        return None
    return Example(ids, list(ids))


def tokenize_rows(
    tokenizer: Any, rows: list[dict[str, Any]], fmt: str, max_seq_length: int
) -> tuple[list[Example], TokenStats]:
    """Examples truncated to `max_seq_length` (the end is cut); rows left with no target token are dropped
    and counted, so a dataset whose prompts all exceed the limit is reported instead of training on nothing."""
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("NoChatTemplate", "format chat needs a tokenizer with a chat template; this one has none")
    stats = TokenStats(rows=len(rows))
    examples = []
    for row in rows:
        example = build_example(tokenizer, row, fmt)
        if example is None:
            stats.dropped["no_target_tokens"] += 1
            continue
        if len(example.input_ids) > max_seq_length:
            example = Example(example.input_ids[:max_seq_length], example.labels[:max_seq_length])
            stats.truncated += 1
        if example.target_tokens == 0:
            stats.dropped["no_target_tokens_after_truncation"] += 1
            continue
        examples.append(example)
    stats.kept = len(examples)
    return examples, stats


def pack_examples(examples: list[Example], max_seq_length: int) -> list[Example]:
    """Whole examples packed in order into sequences of at most `max_seq_length` tokens. Positions restart
    at each example, and each example's first label is masked so that no token is trained to follow the
    previous example. (Attention still spans the pack unless the attention kernel honours position_ids, as
    flash-attention does; this is the usual trade of packing.)"""
    packs: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example.input_ids) > max_seq_length:
            packs.append(Example(ids, labels, positions))
            ids, labels, positions = [], [], []
        ids.extend(example.input_ids)
        labels.extend([IGNORE_INDEX, *example.labels[1:]])
        positions.extend(range(len(example.input_ids)))
    if ids:
        packs.append(Example(ids, labels, positions))
    return packs


def micro_batches_per_epoch(n_examples: int, batch_size: int, world_size: int) -> int:
    return max(1, math.ceil(n_examples / (batch_size * world_size)))


class BatchPlan:
    """Which examples each rank's micro-batch holds, as a pure function of the micro-batch's number.

    Each epoch is a seeded permutation, wrapped around to fill the last micro-batch of every rank, so all ranks
    run the same number of micro-batches (a collective never waits on a rank that ran out). The position in
    the data follows from the step alone, so resuming needs no iterator state."""

    def __init__(self, n_examples: int, batch_size: int, world_size: int, rank: int, seed: int) -> None:
        self.n_examples = n_examples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.per_epoch = micro_batches_per_epoch(n_examples, batch_size, world_size)
        self._epoch = -1
        self._order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            order = list(range(self.n_examples))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._epoch, self._order = epoch, order
        return self._order

    def indices(self, global_index: int) -> list[int]:
        """Example indices of this rank's micro-batch number `global_index` (counted across epochs)."""
        epoch, within = divmod(global_index, self.per_epoch)
        order = self.order(epoch)
        start = (within * self.world_size + self.rank) * self.batch_size
        return [order[(start + offset) % self.n_examples] for offset in range(self.batch_size)]
