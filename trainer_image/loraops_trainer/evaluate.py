"""`loraops_trainer evaluate`: adapter against base on a golden set, with paired bootstrap confidence intervals.

Each golden row is answered twice, by the base model and by the adapter, through an OpenAI-compatible endpoint
(e.g. the vLLM Service: once with the served base name, once with the adapter's name) or locally with
transformers. Both answers of a row are scored by the same metric, so the comparison is paired: the bootstrap
resamples rows, not answers, and the interval is that of the mean per-row difference.

The trainer reports; the decision (promote or not) is the operator's.

Golden rows (JSONL): `messages` (chat) or `prompt` (completion), `expected`, optional `slice`, optional `regex`
(the pattern of the `regex` metric; rows without one are not scored by it).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import string
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from .config import SHA256_HEX, Model, parse_config, read_config_file
from .errors import ConfigError, IntegrityError, RuntimeFailure
from .progress import Reporter

MetricName = Literal["exact_match", "contains", "token_f1", "json_valid", "regex"]
DEFAULT_METRICS: tuple[MetricName, ...] = ("exact_match", "contains", "token_f1")
NEEDS_EXPECTED = frozenset({"exact_match", "contains", "token_f1"})
REPORT_SCHEMA_VERSION = 1


class GoldenConfig(Model):
    uri: Annotated[str, Field(min_length=1)]
    """JSONL file: `s3://`, `pvc://`, `file://` or a local path."""
    sha256: Annotated[str, Field(pattern=SHA256_HEX)] | None = None
    """Declared sha256 of the file; a mismatch stops the evaluation."""


class EndpointConfig(Model):
    url: Annotated[str, Field(pattern=r"^https?://")]
    """Base URL of an OpenAI-compatible server (with or without `/v1`)."""
    base_model: Annotated[str, Field(min_length=1)]
    """The model name that answers as the base (vLLM's served model name)."""
    adapter_model: Annotated[str, Field(min_length=1)]
    """The model name that answers with the adapter (vLLM's lora name)."""
    api_key_env: str | None = None
    """Name of an environment variable holding a bearer token (never the token itself)."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 60
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a request that failed by connection, timeout or 5xx (4xx is not retried)."""
    headers: dict[str, str] | None = None
    """Extra request headers (e.g. a tenant header the router routes on)."""


class LocalConfig(Model):
    base_model: Annotated[str, Field(min_length=1)]
    """Base model directory (or `pvc://`, `file://`, `s3://`)."""
    adapter: Annotated[str, Field(min_length=1)]
    """Adapter directory (or uri). When it holds a manifest, it is verified first."""
    batch_size: Annotated[int, Field(ge=1)] = 8


class GenerationConfig(Model):
    max_tokens: Annotated[int, Field(ge=1)] = 64
    temperature: Annotated[float, Field(ge=0)] = 0.0
    """0 is greedy: the same answer every time, so deltas reflect the models, not sampling."""
    stop: list[str] | None = None


class BootstrapConfig(Model):
    samples: Annotated[int, Field(ge=100, le=100_000)] = 2000
    seed: int = 0
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95


class EvaluateConfig(Model):
    """Everything `loraops_trainer evaluate` needs; exactly one of `endpoint` and `local`."""

    golden: GoldenConfig
    metrics: list[MetricName] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    endpoint: EndpointConfig | None = None
    local: LocalConfig | None = None
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    normalize: bool = True
    """Compare case-, punctuation- and whitespace-insensitively (exact_match, contains, token_f1)."""

    @model_validator(mode="after")
    def _one_backend(self) -> EvaluateConfig:
        if (self.endpoint is None) == (self.local is None):
            raise ValueError("set exactly one of endpoint and local")
        if not self.metrics:
            raise ValueError("metrics must name at least one metric")
        return self


# --- metrics ---------------------------------------------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def token_f1(prediction: str, expected: str) -> float:
    predicted, wanted = prediction.split(), expected.split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common: dict[str, int] = {}
    for token in wanted:
        common[token] = common.get(token, 0) + 1
    overlap = 0
    for token in predicted:
        if common.get(token, 0) > 0:
            overlap += 1
            common[token] -= 1
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(wanted)
    return 2 * precision * recall / (precision + recall)


def is_json(text: str) -> bool:
    try:
        json.loads(text.strip())
    except ValueError:
        return False
    return True


def score(metric: str, prediction: str, row: dict[str, Any], normalize: bool) -> float | None:
    """A row's score in [0, 1], or None when the metric does not apply to the row."""
    expected = row.get("expected")
    if metric in NEEDS_EXPECTED:
        if not isinstance(expected, str):
            return None
        got, want = (
            (normalize_text(prediction), normalize_text(expected))
            if normalize
            else (prediction.strip(), expected.strip())
        )
        if metric == "exact_match":
            return float(got == want)
        if metric == "contains":
            return float(want in got)
        return token_f1(got, want)
    if metric == "json_valid":
        return float(is_json(prediction))
    pattern = row.get("regex")
    if not isinstance(pattern, str):
        return None
    return float(re.search(pattern, prediction) is not None)


# --- paired bootstrap ------------------------------------------------------------------------------------


def paired_comparison(
    base: Sequence[float], adapter: Sequence[float], *, samples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Means of both, their difference (adapter − base), and the percentile bootstrap interval of the
    difference from resampling rows with replacement (seeded: the same inputs give the same interval)."""
    import numpy as np

    if len(base) != len(adapter):
        raise ValueError("paired scores must have the same length")
    n = len(base)
    if n == 0:
        return {"n": 0, "base": None, "adapter": None, "delta": None, "ci": None}
    b = np.asarray(base, dtype=np.float64)
    a = np.asarray(adapter, dtype=np.float64)
    differences = a - b
    rng = np.random.default_rng(seed)
    deltas = np.empty(samples, dtype=np.float64)
    block = max(1, min(samples, 4_000_000 // max(1, n)))
    for start in range(0, samples, block):
        count = min(block, samples - start)
        indices = rng.integers(0, n, size=(count, n))
        deltas[start : start + count] = differences[indices].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return {
        "n": n,
        "base": float(b.mean()),
        "adapter": float(a.mean()),
        "delta": float(differences.mean()),
        "ci": [float(low), float(high)],
    }


# --- golden set ------------------------------------------------------------------------------------------


def read_golden(config: EvaluateConfig, workdir: pathlib.Path) -> tuple[list[dict[str, Any]], str]:
    from .data import iter_jsonl
    from .manifest import file_sha256
    from .storage import fetch_file

    path = fetch_file(config.golden.uri, workdir, reason_missing="GoldenNotFound")
    digest = file_sha256(path)
    if config.golden.sha256 and digest != config.golden.sha256:
        raise IntegrityError(
            "GoldenDigestMismatch", f"{config.golden.uri}: sha256 {digest} != declared {config.golden.sha256}"
        )
    rows = []
    needs_expected = bool(NEEDS_EXPECTED & set(config.metrics))
    for where, row in iter_jsonl(path, config.golden.uri, "GoldenInvalid"):
        if not isinstance(row, dict):
            raise ConfigError("GoldenInvalid", f"{where}: expected a JSON object")
        has_messages, has_prompt = isinstance(row.get("messages"), list), isinstance(row.get("prompt"), str)
        if has_messages == has_prompt:
            raise ConfigError("GoldenInvalid", f"{where}: needs exactly one of 'messages' (list) and 'prompt' (string)")
        if needs_expected and not isinstance(row.get("expected"), str):
            raise ConfigError("GoldenInvalid", f"{where}: 'expected' must be a string")
        if "slice" in row and not isinstance(row["slice"], str):
            raise ConfigError("GoldenInvalid", f"{where}: 'slice' must be a string")
        if "regex" in row:
            try:
                re.compile(row["regex"])
            except (re.error, TypeError) as error:
                raise ConfigError("GoldenInvalid", f"{where}: 'regex' is not a valid pattern ({error})") from None
        rows.append(row)
    if not rows:
        raise ConfigError("GoldenEmpty", f"{config.golden.uri}: no rows")
    return rows, digest


# --- answering -------------------------------------------------------------------------------------------

Answer = str | Exception
Answerer = Callable[[list[dict[str, Any]], str], list[Answer]]
"""(rows, "base" | "adapter") -> one answer or the exception that prevented it, per row."""


class EndpointAnswerer:
    """Answers through an OpenAI-compatible HTTP API, `concurrency` requests at a time."""

    def __init__(self, endpoint: EndpointConfig, generation: GenerationConfig) -> None:
        self.endpoint = endpoint
        self.generation = generation
        root = endpoint.url.rstrip("/")
        self.root = root if root.endswith("/v1") else f"{root}/v1"
        self.token: str | None = None
        if endpoint.api_key_env:
            self.token = os.environ.get(endpoint.api_key_env)
            if not self.token:
                raise ConfigError("MissingCredentials", f"environment variable {endpoint.api_key_env} is not set")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", **(self.endpoint.headers or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode()
        attempt = 0
        while True:
            request = urllib.request.Request(f"{self.root}{path}", data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.endpoint.timeout_seconds) as response:
                    payload = json.loads(response.read())
                    if not isinstance(payload, dict):
                        raise RuntimeFailure("BadResponse", f"{path}: response is not a JSON object")
                    return payload
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode(errors="replace")
                if error.code < 500 or attempt >= self.endpoint.retries:
                    raise RuntimeFailure("EndpointError", f"HTTP {error.code} from {path}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt >= self.endpoint.retries:
                    raise RuntimeFailure("EndpointUnreachable", f"{self.root}{path}: {error}") from None
            attempt += 1
            time.sleep(min(2.0, 0.2 * 2**attempt))

    def _answer(self, row: dict[str, Any], model: str) -> Answer:
        common: dict[str, Any] = {
            "model": model,
            "max_tokens": self.generation.max_tokens,
            "temperature": self.generation.temperature,
        }
        if self.generation.stop:
            common["stop"] = self.generation.stop
        try:
            if "messages" in row:
                payload = self._post("/chat/completions", {**common, "messages": row["messages"]})
                return str(payload["choices"][0]["message"]["content"] or "")
            payload = self._post("/completions", {**common, "prompt": row["prompt"]})
            return str(payload["choices"][0]["text"])
        except (KeyError, IndexError, TypeError) as error:
            return RuntimeFailure("BadResponse", f"unexpected response shape ({error!r})")
        except Exception as error:
            return error

    def __call__(self, rows: list[dict[str, Any]], which: str) -> list[Answer]:
        model = self.endpoint.base_model if which == "base" else self.endpoint.adapter_model
        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            return list(pool.map(lambda row: self._answer(row, model), rows))


class LocalAnswerer:
    """Greedy generation with transformers: the base model alone, then with the adapter applied."""

    def __init__(self, local: LocalConfig, generation: GenerationConfig, workdir: pathlib.Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .manifest import read_manifest, verify_directory
        from .storage import fetch_dir

        base_dir = fetch_dir(local.base_model, workdir, reason_missing="BaseModelNotFound")
        adapter_dir = fetch_dir(local.adapter, workdir, reason_missing="AdapterNotFound")
        if read_manifest(adapter_dir) is not None:
            verify_directory(adapter_dir).raise_for_problems(local.adapter)
        self.generation = generation
        self.batch_size = local.batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The checkpoint's own dtype on GPUs (bf16 for most models); fp32 on CPU, where half precision is slow.
        base: Any = AutoModelForCausalLM.from_pretrained(
            str(base_dir), dtype="auto" if self.device.type == "cuda" else torch.float32
        )
        base.to(self.device)
        try:
            self.model: Any = PeftModel.from_pretrained(base, str(adapter_dir))
        except Exception as error:
            raise ConfigError(
                "AdapterInvalid", f"{local.adapter}: cannot apply it to {local.base_model} ({error})"
            ) from None
        self.model.eval()

    def _encode(self, row: dict[str, Any]) -> list[int]:
        if "messages" in row:
            text = self.tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(row["prompt"])["input_ids"])

    def _generate(self, rows: list[dict[str, Any]]) -> list[str]:
        import torch

        encoded = [self._encode(row) for row in rows]
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        greedy = self.generation.temperature == 0
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=self.generation.max_tokens,
                do_sample=not greedy,
                temperature=None if greedy else self.generation.temperature,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
        texts = [str(self.tokenizer.decode(row[width:], skip_special_tokens=True)) for row in output]
        if self.generation.stop:
            texts = [_cut_at_stop(text, self.generation.stop) for text in texts]
        return texts

    def __call__(self, rows: list[dict[str, Any]], which: str) -> list[Answer]:
        import contextlib

        answers: list[Answer] = []
        context = self.model.disable_adapter() if which == "base" else contextlib.nullcontext()
        with context:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                try:
                    answers.extend(self._generate(chunk))
                except Exception as error:
                    answers.extend([error] * len(chunk))
        return answers


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


# --- report ----------------------------------------------------------------------------------------------


@dataclass
class Scored:
    rows: list[dict[str, Any]]
    base: list[Answer]
    adapter: list[Answer]


def build_report(config: EvaluateConfig, scored: Scored) -> dict[str, Any]:
    """Per metric (overall and per slice): base and adapter means, delta, paired bootstrap CI, n; plus
    sample counts and failures. A row whose base or adapter answer failed is left out of every metric."""
    boot = config.bootstrap
    ok = [
        i
        for i in range(len(scored.rows))
        if not isinstance(scored.base[i], Exception) and not isinstance(scored.adapter[i], Exception)
    ]
    failures = []
    for i in range(len(scored.rows)):
        for which, answers in (("base", scored.base), ("adapter", scored.adapter)):
            if isinstance(answers[i], Exception):
                failures.append({"row": i, "model": which, "error": str(answers[i])[:300]})

    def section(indices: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for metric in config.metrics:
            pairs = []
            for i in indices:
                b = score(metric, str(scored.base[i]), scored.rows[i], config.normalize)
                a = score(metric, str(scored.adapter[i]), scored.rows[i], config.normalize)
                if b is not None and a is not None:
                    pairs.append((b, a))
            out[metric] = paired_comparison(
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                samples=boot.samples,
                seed=boot.seed,
                confidence=boot.confidence,
            )
        return out

    slices: dict[str, list[int]] = {}
    for i in ok:
        name = scored.rows[i].get("slice")
        if isinstance(name, str):
            slices.setdefault(name, []).append(i)
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "samples": len(scored.rows),
        "evaluated": len(ok),
        "failures": {
            "base": sum(1 for f in failures if f["model"] == "base"),
            "adapter": sum(1 for f in failures if f["model"] == "adapter"),
            "examples": failures[:10],
        },
        "metrics": section(ok),
        "slices": {name: {"samples": len(idx), "metrics": section(idx)} for name, idx in sorted(slices.items())},
        "bootstrap": {"samples": boot.samples, "seed": boot.seed, "confidence": boot.confidence},
    }


def run_evaluation(
    config_path: pathlib.Path | str, output: pathlib.Path | str | None = None, *, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Evaluate as configured; write the full report to `output` and return a short summary."""
    reporter = reporter or Reporter()
    config = parse_config(EvaluateConfig, read_config_file(config_path), str(config_path))
    with tempfile.TemporaryDirectory(prefix="loraops-evaluate-") as tmp:
        work = pathlib.Path(tmp)
        rows, digest = read_golden(config, work)
        answerer: Answerer
        if config.endpoint is not None:
            answerer = EndpointAnswerer(config.endpoint, config.generation)
            models = {"base": config.endpoint.base_model, "adapter": config.endpoint.adapter_model}
        else:
            assert config.local is not None
            answerer = LocalAnswerer(config.local, config.generation, work)
            models = {"base": config.local.base_model, "adapter": config.local.adapter}
        reporter.emit("started", samples=len(rows), metrics=list(config.metrics), models=models)
        base = answerer(rows, "base")
        reporter.emit(
            "progress", phase="base", answered=sum(not isinstance(a, Exception) for a in base), samples=len(rows)
        )
        adapter = answerer(rows, "adapter")
        reporter.emit(
            "progress", phase="adapter", answered=sum(not isinstance(a, Exception) for a in adapter), samples=len(rows)
        )
    report = build_report(config, Scored(rows, base, adapter))
    report["golden"] = {"uri": config.golden.uri, "sha256": digest, "rows": len(rows)}
    report["models"] = models
    report["mode"] = "endpoint" if config.endpoint is not None else "local"
    if report["evaluated"] == 0:
        example = report["failures"]["examples"][0]["error"] if report["failures"]["examples"] else "no answers"
        raise RuntimeFailure("EvaluationFailed", f"no golden row got both answers (first error: {example})")
    if output is not None:
        path = pathlib.Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    summary = {
        "status": "succeeded",
        "samples": report["samples"],
        "evaluated": report["evaluated"],
        "failures": {"base": report["failures"]["base"], "adapter": report["failures"]["adapter"]},
        "metrics": {
            name: {key: value[key] for key in ("base", "adapter", "delta", "ci", "n")}
            for name, value in report["metrics"].items()
        },
        "report": str(output) if output is not None else None,
    }
    reporter.emit("result", **summary)
    return summary
