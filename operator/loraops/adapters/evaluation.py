"""The evaluation gate (pure): the Job that scores adapter against base, its result, and the decision.

A gate run is identified by its inputs — the adapter's digest, the golden set (the sha256 of the ConfigMap
value, or its uri), the metrics and the generation length, and the names it queries. The Job is named after
that key, so creating it again is a 409, a finished run is never repeated for the same inputs, and a new
digest or golden set gets a new run.

The trainer's `evaluate` summary carries the overall figures; the gate also needs the per-slice figures of
the gating metric and the golden set's digest, which are in the full report it writes. The Job therefore
runs the trainer's own CLI through a few lines of Python that, on success, replace the termination message
with a compact summary of that report (`EVAL_SCRIPT`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from loraops.api.adapter import EvaluationResult, EvaluationSpec, SliceScore
from loraops.config import OperatorConfig
from loraops.kube.objects import MANAGED_BY, Owner, bounded_name, restricted_security_context
from loraops.training.planner import S3_SECRET_KEYS, TRAINER_UID

Obj = dict[str, Any]

ADAPTER_LABEL = "loraops.io/adapter"
CONTAINER = "trainer"
CONFIG_DIR = "/etc/loraops/evaluate"
GOLDEN_DIR = "/etc/loraops/golden"
WORK_DIR = "/tmp"
MAX_SLICES = 40
"""Slices in the termination message (worst first): it holds at most 4096 bytes."""
METRIC_NAMES = {"regex_match": "regex"}
"""API metric names that the trainer spells differently."""

EVAL_SCRIPT = """\
import json, sys
MAX_SLICES = __MAX_SLICES__
from loraops_trainer.cli import main
from loraops_trainer.progress import write_termination_log
config, report, metric, golden = (sys.argv[1:] + [""])[:4]
if golden:
    import yaml
    settings = yaml.safe_load(open(config))
    settings["golden"]["uri"] = golden
    config = report + ".evaluate.yaml"
    open(config, "w").write(yaml.safe_dump(settings))
code = main(["evaluate", "--config", config, "--output", report])
if code == 0:
    data = json.load(open(report))
    overall = data["metrics"][metric]
    slices = []
    for name, part in data.get("slices", {}).items():
        m = part["metrics"].get(metric) or {}
        if m.get("n"):
            slices.append([name, m["base"], m["adapter"], m["n"]])
    slices.sort(key=lambda s: s[2] - s[1])
    write_termination_log({
        "event": "result", "exit_code": 0, "gate": 1, "metric": metric, "samples": data["samples"],
        "evaluated": data["evaluated"], "golden_sha256": data["golden"]["sha256"],
        "base": overall["base"], "adapter": overall["adapter"], "delta": overall["delta"],
        "ci": overall["ci"], "n": overall["n"], "slices": slices[:MAX_SLICES],
    })
sys.exit(code)
""".replace("__MAX_SLICES__", str(MAX_SLICES))


@dataclass(frozen=True)
class Golden:
    """The golden set as the Job reads it."""

    identity: str
    """What a change of the golden set changes: the ConfigMap value's sha256, or the uri."""
    sha256: str | None
    """Pinned for the trainer to verify (known for ConfigMaps, which the operator reads)."""
    config_map: str | None = None
    key: str | None = None
    uri: str | None = None
    credentials_secret: str | None = None


def golden_from(evaluation: EvaluationSpec, config_map: Obj | None) -> Golden | str:
    """The golden set, or why it cannot be used."""
    golden = evaluation.golden
    if golden.config_map_ref is not None:
        ref = golden.config_map_ref
        if config_map is None:
            return f"ConfigMap {ref.name} (golden set) does not exist"
        value = (config_map.get("data") or {}).get(ref.key)
        if value is None:
            return f"ConfigMap {ref.name} has no key {ref.key}"
        digest = hashlib.sha256(value.encode()).hexdigest()
        return Golden(identity=digest, sha256=digest, config_map=ref.name, key=ref.key)
    assert golden.uri is not None
    secret = golden.credentials_secret_ref.name if golden.credentials_secret_ref else None
    return Golden(identity=golden.uri, sha256=None, uri=golden.uri, credentials_secret=secret)


def gate_key(digest: str, golden: Golden, evaluation: EvaluationSpec, base: str, served_name: str) -> str:
    inputs = [digest, golden.identity, ",".join(evaluation.metrics), str(evaluation.max_tokens), base, served_name]
    return hashlib.sha256("\n".join(inputs).encode()).hexdigest()


def job_name(adapter: str, key: str) -> str:
    return bounded_name(adapter, f"eval-{key[:10]}")


def gating_metric(evaluation: EvaluationSpec) -> str:
    return METRIC_NAMES.get(evaluation.metrics[0], evaluation.metrics[0])


def evaluate_config(
    evaluation: EvaluationSpec, golden: Golden, endpoint: str, base: str, served_name: str
) -> dict[str, Any]:
    uri = f"{GOLDEN_DIR}/{golden.key}" if golden.config_map else str(golden.uri)
    return {
        "golden": {"uri": uri, **({"sha256": golden.sha256} if golden.sha256 else {})},
        "metrics": sorted({METRIC_NAMES.get(m, m) for m in evaluation.metrics}),
        "endpoint": {"url": endpoint, "base_model": base, "adapter_model": served_name},
        "generation": {"max_tokens": evaluation.max_tokens, "temperature": 0.0},
    }


def render_evaluation(
    owner: Owner,
    evaluation: EvaluationSpec,
    golden: Golden,
    key: str,
    endpoint: str,
    base: str,
    served_name: str,
    config: OperatorConfig,
) -> list[Obj]:
    """ConfigMap (the evaluate config) and Job, both owned by the adapter (deleted with it)."""
    name = job_name(owner.name, key)
    labels = {ADAPTER_LABEL: owner.name, "app.kubernetes.io/component": "evaluation", **MANAGED_BY}
    metadata = {"namespace": owner.namespace, "labels": labels, "ownerReferences": [owner.reference()]}
    config_file = "evaluate.yaml"
    data = yaml.safe_dump(evaluate_config(evaluation, golden, endpoint, base, served_name), sort_keys=True)
    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": WORK_DIR},
    ]
    volumes: list[Obj] = [{"name": "config", "configMap": {"name": name}}, {"name": "scratch", "emptyDir": {}}]
    if golden.config_map:
        mounts.append({"name": "golden", "mountPath": GOLDEN_DIR, "readOnly": True})
        volumes.append({"name": "golden", "configMap": {"name": golden.config_map}})
    env: list[Obj] = [{"name": "HOME", "value": WORK_DIR}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if golden.credentials_secret:
        env += [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": golden.credentials_secret, "key": k, "optional": True}}}
            for k in S3_SECRET_KEYS
        ]
    container: Obj = {
        "name": CONTAINER,
        "image": config.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", EVAL_SCRIPT],
        # The golden file's path also travels as an argument: a runner that maps mounts to other folders (the
        # local Job runner of dev mode) rewrites arguments, not the contents of a config file.
        "args": [
            f"{CONFIG_DIR}/{config_file}",
            f"{WORK_DIR}/report.json",
            gating_metric(evaluation),
            f"{GOLDEN_DIR}/{golden.key}" if golden.config_map else "",
        ],
        "env": env,
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": restricted_security_context(TRAINER_UID),
    }
    job: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, **metadata, "annotations": {"loraops.io/gate-key": key}},
        "spec": {
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": config.evaluation_ttl_seconds,
            "podFailurePolicy": {
                "rules": [
                    # exit 3: bad golden set or config; 4: golden digest mismatch — a retry cannot help.
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [3, 4]},
                    }
                ]
            },
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **metadata},
        "data": {config_file: data},
    }
    return [config_map, job]


# ---- the result ----


@dataclass(frozen=True)
class JobOutcome:
    state: str  # Running | Succeeded | Failed
    summary: Obj | None = None
    message: str = ""


def _true_condition(job: Obj, type_: str) -> Obj | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def _terminated_messages(pods: list[Obj]) -> list[str]:
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
    messages = []
    for pod in newest:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                messages.append(str(terminated["message"]))
    return messages


def _json(text: str) -> Obj | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def job_outcome(job: Obj, pods: list[Obj]) -> JobOutcome:
    complete, failed = _true_condition(job, "Complete"), _true_condition(job, "Failed")
    records = [r for r in (_json(m) for m in _terminated_messages(pods)) if r is not None]
    if complete:
        summary = next((r for r in records if r.get("event") == "result" and r.get("gate")), None)
        if summary is None:
            return JobOutcome("Failed", message="the evaluation Job completed without a gate summary")
        return JobOutcome("Succeeded", summary)
    if failed:
        error = next((r for r in records if r.get("event") == "error"), None)
        if error:
            return JobOutcome("Failed", message=f"{error.get('reason', 'Error')}: {error.get('message', '')}")
        return JobOutcome("Failed", message=str(failed.get("message") or failed.get("reason") or "the Job failed"))
    return JobOutcome("Running")


def result_from(
    summary: Obj, evaluation: EvaluationSpec, digest: str, golden: Golden, job: str, now: datetime
) -> EvaluationResult:
    slices = [
        SliceScore(
            name=str(s[0]),
            base_score=float(s[1]),
            adapter_score=float(s[2]),
            delta=float(s[2]) - float(s[1]),
            samples=int(s[3]),
        )
        for s in summary.get("slices") or []
    ]
    ci = summary.get("ci") or [None, None]
    result = EvaluationResult(
        metric=str(summary.get("metric") or evaluation.metrics[0]),
        base_score=float(summary["base"]),
        adapter_score=float(summary["adapter"]),
        delta=float(summary["delta"]),
        ci_low=float(ci[0]),
        ci_high=float(ci[1]),
        samples=int(summary.get("n") or summary.get("evaluated") or 0),
        slices=slices or None,
        passed=False,
        digest=digest,
        golden_digest=summary.get("golden_sha256") or golden.sha256,
        completed_at=now,
        job_name=job,
    )
    passed, _, _ = decide(result, evaluation)
    return result.model_copy(update={"passed": passed})


def decide(result: EvaluationResult, evaluation: EvaluationSpec) -> tuple[bool, str, str]:
    """(passed, reason, message): the CI's lower bound must reach minDelta and no slice may lose more than
    maxSliceRegression against the base."""
    figures = (
        f"{result.metric}: adapter {result.adapter_score:.3f} vs base {result.base_score:.3f}, "
        f"Δ {result.delta:+.3f} (95% CI {result.ci_low:+.3f}..{result.ci_high:+.3f}, n={result.samples})"
    )
    if result.ci_low < evaluation.min_delta:
        return False, "BelowMinDelta", f"{figures}; the CI's lower bound is below minDelta {evaluation.min_delta:+.3f}"
    worst = [s for s in result.slices or [] if s.delta < -evaluation.max_slice_regression]
    if worst:
        named = ", ".join(f"{s.name} {s.delta:+.3f}" for s in sorted(worst, key=lambda s: s.delta))
        return False, "SliceRegression", f"{figures}; slices regress beyond {evaluation.max_slice_regression}: {named}"
    return True, "Passed", figures
