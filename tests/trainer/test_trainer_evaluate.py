"""evaluate: metrics, paired bootstrap intervals, an OpenAI-compatible endpoint, and local transformers."""

from __future__ import annotations

import json
import math
import pathlib
import random
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loraops_trainer import testing
from loraops_trainer.evaluate import EvaluateConfig, Scored, build_report, paired_comparison, score, token_f1

from .conftest import Outcome, train_quietly, write_config

pytestmark = pytest.mark.trainer


def test_known_difference_gives_its_delta_and_a_ci_around_it() -> None:
    n, wins = 200, 60
    base = [0.0] * n
    adapter = [1.0] * wins + [0.0] * (n - wins)
    result = paired_comparison(base, adapter, samples=4000, seed=1)
    assert result["delta"] == pytest.approx(wins / n)
    low, high = result["ci"]
    assert 0 < low < wins / n < high
    expected_width = 2 * 1.96 * math.sqrt(0.3 * 0.7 / n)  # normal approximation of a proportion's CI
    assert high - low == pytest.approx(expected_width, rel=0.2)
    assert paired_comparison(base, adapter, samples=4000, seed=1) == result


def test_pairing_narrows_the_interval_of_a_consistent_gain() -> None:
    rng = random.Random(5)
    base = [float(rng.random() < 0.5) for _ in range(300)]
    adapter = list(base)
    fixed = [i for i, value in enumerate(base) if value == 0.0][:30]
    for i in fixed:
        adapter[i] = 1.0
    result = paired_comparison(base, adapter, samples=4000, seed=0)
    assert result["delta"] == pytest.approx(30 / 300)
    low, high = result["ci"]
    # Paired: the spread of per-row differences (sd 0.3) sets the width, about ±0.034. Unpaired means at
    # p≈0.5 would give about ±0.08.
    assert 0.05 < low < 0.1 < high < 0.15
    assert high - low < 0.1


def test_identical_predictions_give_a_ci_containing_zero() -> None:
    rows = testing.golden_rows()
    answers: list[str | Exception] = [row["expected"] if i % 3 else "wrong" for i, row in enumerate(rows)]
    config = EvaluateConfig.model_validate(
        {"golden": {"uri": "g.jsonl"}, "endpoint": {"url": "http://x", "baseModel": "b", "adapterModel": "a"}}
    )
    report = build_report(config, Scored(rows, answers, list(answers)))
    for metric in ("exact_match", "contains", "token_f1"):
        result = report["metrics"][metric]
        assert result["delta"] == 0 and result["ci"][0] <= 0 <= result["ci"][1]
        assert result["base"] == result["adapter"] > 0


def test_balanced_disagreement_has_zero_delta_and_a_wide_ci() -> None:
    base = [1.0] * 20 + [0.0] * 20 + [1.0] * 10
    adapter = [0.0] * 20 + [1.0] * 20 + [1.0] * 10
    result = paired_comparison(base, adapter, samples=2000, seed=3)
    assert result["delta"] == 0
    assert result["ci"][0] < 0 < result["ci"][1]


def test_metrics() -> None:
    row = {"expected": "Paris"}
    assert score("exact_match", " paris. ", row, normalize=True) == 1.0
    assert score("exact_match", " paris. ", row, normalize=False) == 0.0
    assert score("contains", "The capital is Paris!", row, normalize=True) == 1.0
    assert score("token_f1", "the capital is paris", row, normalize=True) == pytest.approx(0.4)
    assert token_f1("a b c", "a b d") == pytest.approx(2 / 3)
    assert score("json_valid", ' {"a": [1, 2]} ', {}, normalize=True) == 1.0
    assert score("json_valid", "{'a': 1}", {}, normalize=True) == 0.0
    assert score("regex", "order #12345 shipped", {"regex": r"#\d{5}\b"}, normalize=True) == 1.0
    assert score("regex", "order shipped", {"regex": r"#\d{5}\b"}, normalize=True) == 0.0
    assert score("regex", "anything", {}, normalize=True) is None


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers like a served base and adapter: the base never knows, the adapter knows all but Norway. The
    first request for Japan's base answer gets a 503 (retried); every adapter answer for Peru gets a 500."""

    seen: list[dict[str, Any]] = []
    lock = threading.Lock()
    flaky_done = False

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        country = next(c for c in testing.CAPITALS if c in text)
        with FakeOpenAI.lock:
            FakeOpenAI.seen.append(
                {
                    "path": self.path,
                    "model": body["model"],
                    "auth": self.headers.get("Authorization"),
                    "tenant": self.headers.get("X-Tenant"),
                }
            )
            flaky = country == "japan" and body["model"] == "base" and not FakeOpenAI.flaky_done
            if flaky:
                FakeOpenAI.flaky_done = True
        if flaky or (country == "peru" and body["model"] == "capitals-v1"):
            self.send_response(503 if flaky else 500)
            self.end_headers()
            self.wfile.write(b"unavailable")
            return
        if body["model"] == "base":
            answer = "i do not know"
        else:
            answer = "bergen" if country == "norway" else testing.CAPITALS[country]
        if self.path.endswith("/chat/completions"):
            payload = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        else:
            payload = {"choices": [{"text": " " + answer}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_openai() -> Iterator[str]:
    FakeOpenAI.seen, FakeOpenAI.flaky_done = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_evaluate_against_an_openai_compatible_endpoint(
    fake_openai: str, tmp_path: pathlib.Path, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVAL_TOKEN", "s3cret")
    monkeypatch.setenv("LORAOPS_TERMINATION_LOG", str(tmp_path / "termination-log"))
    golden = testing.write_jsonl(tmp_path / "golden.jsonl", testing.golden_rows())
    config = write_config(
        tmp_path / "eval.json",
        {
            "golden": {"uri": str(golden)},
            "endpoint": {
                "url": fake_openai,
                "baseModel": "base",
                "adapterModel": "capitals-v1",
                "apiKeyEnv": "EVAL_TOKEN",
                "retries": 1,
                "headers": {"X-Tenant": "acme"},
            },
            "metrics": ["exact_match", "contains", "token_f1"],
            "bootstrap": {"samples": 1000, "seed": 0},
        },
    )
    outcome = cli("evaluate", "--config", str(config), "--output", str(tmp_path / "report.json"))
    assert outcome.code == 0, outcome.events
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples"] == 8 and report["evaluated"] == 7
    assert report["failures"]["adapter"] == 1 and report["failures"]["base"] == 0
    assert "HTTP 500" in report["failures"]["examples"][0]["error"]
    exact = report["metrics"]["exact_match"]
    assert exact["n"] == 7 and exact["base"] == 0 and exact["adapter"] == pytest.approx(6 / 7)
    assert exact["delta"] == pytest.approx(6 / 7) and exact["ci"][0] > 0
    assert set(report["slices"]) == {"chat", "prompt"}
    assert sum(s["samples"] for s in report["slices"].values()) == 7
    assert {s["path"] for s in FakeOpenAI.seen} == {"/v1/chat/completions", "/v1/completions"}
    assert {s["auth"] for s in FakeOpenAI.seen} == {"Bearer s3cret"} and {s["tenant"] for s in FakeOpenAI.seen} == {
        "acme"
    }
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["metrics"]["exact_match"]["delta"] == pytest.approx(6 / 7)
    assert "s3cret" not in (tmp_path / "report.json").read_text() + (tmp_path / "termination-log").read_text()


def test_evaluate_locally_with_transformers(
    tiny_model: pathlib.Path, datasets: dict[str, pathlib.Path], tmp_path: pathlib.Path, cli: Callable[..., Outcome]
) -> None:
    adapter = tmp_path / "adapter"
    train_quietly(testing.train_config(tiny_model, datasets["chat"], adapter, fmt="chat", max_steps=60))
    golden = testing.write_jsonl(tmp_path / "golden.jsonl", testing.golden_rows())
    config = write_config(
        tmp_path / "eval.json",
        {
            "golden": {"uri": str(golden)},
            "local": {"baseModel": str(tiny_model), "adapter": str(adapter)},
            "generation": {"maxTokens": 6},
            "bootstrap": {"samples": 500},
        },
    )
    outcome = cli("evaluate", "--config", str(config), "--output", str(tmp_path / "report.json"))
    assert outcome.code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    chat = report["slices"]["chat"]["metrics"]["exact_match"]
    # Trained on chat rows: the adapter answers the chat questions, the random base does not.
    assert chat["adapter"] > chat["base"]
    assert report["metrics"]["exact_match"]["delta"] > 0


def test_evaluate_rejects_a_bad_golden_row(tmp_path: pathlib.Path, cli: Callable[..., Outcome]) -> None:
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"prompt": "a", "expected": "b"}\n{"prompt": "a", "messages": [], "expected": "b"}\n')
    config = write_config(
        tmp_path / "eval.json",
        {
            "golden": {"uri": str(golden)},
            "endpoint": {"url": "http://127.0.0.1:9", "baseModel": "b", "adapterModel": "a"},
        },
    )
    outcome = cli("evaluate", "--config", str(config))
    assert outcome.code == 3 and outcome.last["reason"] == "GoldenInvalid" and "line 2" in outcome.last["message"]
