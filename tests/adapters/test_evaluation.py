"""The evaluation gate: the Job it runs, the summary it reads back, and the decision."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from loraops.adapters import evaluation as gate
from loraops.api.adapter import EvaluationResult, EvaluationSpec, SliceScore
from loraops.config import OperatorConfig
from loraops.kube.objects import Owner

pytestmark = pytest.mark.adapters

OWNER = Owner("loraops.io/v1alpha1", "LoraAdapter", "support-v1", "team-a", "uid-1")
DIGEST = "ab" * 32
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def evaluation(**changes: Any) -> EvaluationSpec:
    raw = {"golden": {"configMapRef": {"name": "golden"}}, "metrics": ["exact_match", "token_f1"], **changes}
    return EvaluationSpec.model_validate(raw)


def config_map(text: str = '{"prompt": "q", "expected": "a"}\n') -> dict[str, Any]:
    return {"metadata": {"name": "golden"}, "data": {"golden.jsonl": text}}


def result(delta_ci: tuple[float, float], slices: list[tuple[str, float, float]] = ()) -> EvaluationResult:  # type: ignore[assignment]
    return EvaluationResult(
        metric="exact_match",
        base_score=0.5,
        adapter_score=0.6,
        delta=0.1,
        ci_low=delta_ci[0],
        ci_high=delta_ci[1],
        samples=40,
        slices=[SliceScore(name=n, base_score=b, adapter_score=a, delta=a - b, samples=10) for n, b, a in slices]
        or None,
        passed=False,
    )


def test_golden_set_from_a_config_map_is_pinned_by_its_digest() -> None:
    golden = gate.golden_from(evaluation(), config_map())
    assert isinstance(golden, gate.Golden) and golden.sha256 and golden.identity == golden.sha256
    assert gate.golden_from(evaluation(), None) == "ConfigMap golden (golden set) does not exist"
    assert "no key golden.jsonl" in str(gate.golden_from(evaluation(), {"data": {"other": "x"}}))


def test_the_key_changes_with_digest_golden_set_and_metrics_only() -> None:
    spec = evaluation()
    golden = gate.golden_from(spec, config_map())
    other_golden = gate.golden_from(spec, config_map('{"prompt": "q2", "expected": "b"}\n'))
    assert isinstance(golden, gate.Golden) and isinstance(other_golden, gate.Golden)
    key = gate.gate_key(DIGEST, golden, spec, "base", "support-v1")
    assert key == gate.gate_key(DIGEST, golden, evaluation(minDelta=0.2), "base", "support-v1"), "thresholds: no rerun"
    assert key != gate.gate_key("cd" * 32, golden, spec, "base", "support-v1")
    assert key != gate.gate_key(DIGEST, other_golden, spec, "base", "support-v1")
    assert key != gate.gate_key(DIGEST, golden, evaluation(metrics=["token_f1"]), "base", "support-v1")
    assert gate.job_name("support-v1", key).startswith("support-v1-eval-")


def test_rendered_job_runs_the_trainer_against_the_service_non_root() -> None:
    spec = evaluation(metrics=["regex_match", "exact_match"], maxTokens=32)
    golden = gate.golden_from(spec, config_map())
    assert isinstance(golden, gate.Golden)
    key = gate.gate_key(DIGEST, golden, spec, "base", "support-v1")
    config_map_obj, job = gate.render_evaluation(
        OWNER, spec, golden, key, "http://llama-8b.team-a.svc:8000", "base", "support-v1", OperatorConfig()
    )
    assert job["metadata"]["name"] == config_map_obj["metadata"]["name"] == gate.job_name("support-v1", key)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["python", "-c"] and "loraops_trainer.cli" in container["command"][2]
    assert container["args"][2] == "regex", "the gating metric in the trainer's spelling"
    assert container["securityContext"]["readOnlyRootFilesystem"] and container["securityContext"]["runAsNonRoot"]
    rendered = yaml.safe_load(config_map_obj["data"]["evaluate.yaml"])
    assert rendered["endpoint"] == {
        "url": "http://llama-8b.team-a.svc:8000",
        "base_model": "base",
        "adapter_model": "support-v1",
    }
    assert rendered["golden"] == {"uri": f"{gate.GOLDEN_DIR}/golden.jsonl", "sha256": golden.sha256}
    assert rendered["metrics"] == ["exact_match", "regex"] and rendered["generation"]["max_tokens"] == 32
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["golden"]["configMap"]["name"] == "golden"


def test_golden_set_from_a_uri_gets_credentials_by_reference_only() -> None:
    spec = EvaluationSpec.model_validate(
        {"golden": {"uri": "s3://golden/support.jsonl", "credentialsSecretRef": {"name": "s3-reader"}}}
    )
    golden = gate.golden_from(spec, None)
    assert isinstance(golden, gate.Golden) and golden.identity == "s3://golden/support.jsonl" and golden.sha256 is None
    _, job = gate.render_evaluation(OWNER, spec, golden, "k" * 64, "http://s:80", "b", "a", OperatorConfig())
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    secret_refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e]
    assert (
        secret_refs and set(secret_refs) == {"s3-reader"} and not any("value" in e and "AWS" in e["name"] for e in env)
    )


def terminated_pod(message: str) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0, "message": message}}
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-11-01T00:00:00Z"},
        "status": {"containerStatuses": [{"state": state}]},
    }


def job(condition: str | None) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": condition, "status": "True"}] if condition else []}}


def test_job_outcomes() -> None:
    figures = {"metric": "exact_match", "base": 0.5, "adapter": 0.7, "delta": 0.2, "ci": [0.1, 0.3], "n": 20}
    summary = {
        "event": "result",
        "gate": 1,
        **figures,
        "golden_sha256": "ef" * 32,
        "slices": [["billing", 0.5, 0.4, 10]],
    }
    assert gate.job_outcome(job(None), []).state == "Running"
    done = gate.job_outcome(job("Complete"), [terminated_pod(json.dumps(summary))])
    assert done.state == "Succeeded" and done.summary == summary
    error = json.dumps({"event": "error", "reason": "GoldenInvalid", "message": "line 3: not valid JSON"})
    failed = gate.job_outcome(job("Failed"), [terminated_pod(error)])
    assert failed.state == "Failed" and "GoldenInvalid: line 3" in failed.message
    no_summary = gate.job_outcome(job("Complete"), [terminated_pod(json.dumps({"event": "result", "exit_code": 0}))])
    assert no_summary.state == "Failed"
    spec = evaluation()
    golden = gate.golden_from(spec, config_map())
    assert isinstance(golden, gate.Golden)
    parsed = gate.result_from(summary, spec, DIGEST, golden, "job-x", NOW)
    assert parsed.ci_low == 0.1 and parsed.digest == DIGEST and parsed.golden_digest == "ef" * 32
    assert parsed.slices and parsed.slices[0].delta == pytest.approx(-0.1)
    assert parsed.passed is False, "billing regresses by 0.1 > 0.02"


@pytest.mark.parametrize(
    ("ci", "slices", "passed", "reason"),
    [
        ((0.01, 0.2), [], True, "Passed"),
        ((0.0, 0.2), [("a", 0.5, 0.49)], True, "Passed"),  # within maxSliceRegression 0.02
        ((-0.01, 0.2), [], False, "BelowMinDelta"),
        ((0.05, 0.2), [("a", 0.5, 0.7), ("b", 0.6, 0.5)], False, "SliceRegression"),
    ],
)
def test_gate_decisions(ci: tuple[float, float], slices: list[Any], passed: bool, reason: str) -> None:
    decided = gate.decide(result(ci, slices), evaluation())
    assert decided[:2] == (passed, reason)
    if reason == "SliceRegression":
        assert "b -0.100" in decided[2] and "a " not in decided[2].split("slices")[1]


def test_min_delta_is_compared_with_the_ci_lower_bound_not_the_mean() -> None:
    assert gate.decide(result((0.04, 0.3)), evaluation(minDelta=0.05))[:2] == (False, "BelowMinDelta")


# --- the Job's script against the real trainer CLI, with a stand-in OpenAI endpoint ---


class _Answers(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body.get("prompt", "")
        # The adapter knows billing answers; both know greetings; the adapter forgets "capital" answers.
        answer = {"billing": "refund", "greeting": "hello", "capital": "paris"}[prompt.split()[0]]
        if body["model"] == "base" and prompt.startswith("billing"):
            answer = "no idea"
        if body["model"] == "support-v1" and prompt.startswith("capital"):
            answer = "lyon"
        payload = json.dumps({"choices": [{"text": answer}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_job_script_writes_the_gate_summary_with_slices(endpoint: str, tmp_path: pathlib.Path) -> None:
    rows = [{"prompt": f"billing {i}", "expected": "refund", "slice": "billing"} for i in range(14)]
    rows += [{"prompt": f"greeting {i}", "expected": "hello", "slice": "greeting"} for i in range(4)]
    rows += [{"prompt": f"capital {i}", "expected": "paris", "slice": "capital"} for i in range(2)]
    golden_text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "golden.jsonl").write_text(golden_text)
    spec = evaluation(metrics=["exact_match"])
    golden = gate.golden_from(spec, config_map(golden_text))
    assert isinstance(golden, gate.Golden)
    config = gate.evaluate_config(spec, golden, endpoint, "base", "support-v1")
    config["golden"]["uri"] = str(tmp_path / "golden.jsonl")
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(config))
    termination = tmp_path / "termination-log"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            gate.EVAL_SCRIPT,
            str(tmp_path / "evaluate.yaml"),
            str(tmp_path / "r.json"),
            "exact_match",
        ],
        env={"LORAOPS_TERMINATION_LOG": str(termination), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    pod = terminated_pod(termination.read_text())
    outcome = gate.job_outcome(job("Complete"), [pod])
    assert outcome.state == "Succeeded" and outcome.summary is not None
    parsed = gate.result_from(outcome.summary, spec, DIGEST, golden, "j", NOW)
    assert parsed.base_score == pytest.approx(6 / 20) and parsed.adapter_score == pytest.approx(18 / 20)
    assert parsed.golden_digest == golden.sha256
    assert {s.name: round(s.delta, 3) for s in parsed.slices or []} == {
        "billing": 1.0,
        "greeting": 0.0,
        "capital": -1.0,
    }
    assert parsed.ci_low > 0, "overall the adapter is clearly better…"
    passed, reason, message = gate.decide(parsed, spec)
    assert (passed, reason) == (False, "SliceRegression") and "capital -1.000" in message  # …but not everywhere
