"""Monitoring objects: scrape targets that exist, alerts and dashboard queries that read metrics the code
exports (a live scrape of operator, router and agent belongs to the e2e tier)."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from loraops.adapters.deployment import AGENT_LABEL, agent_container
from loraops.config import OperatorConfig

from .support import (
    ROOT,
    Obj,
    dashboard,
    dashboard_targets,
    label_values_metric,
    named,
    of_kind,
    promql_metrics,
    render,
)

pytestmark = pytest.mark.chart

MONITORING = {"monitoring.enabled": True}
# Metrics from kube-state-metrics (not ours): only the training-failed alert uses them, and it can be turned off.
KUBE_STATE_METRICS = {"kube_job_owner", "kube_job_failed"}
DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


def alert_rules(objects: list[Obj]) -> list[Obj]:
    return [rule for r in of_kind(objects, "PrometheusRule") for g in r["spec"]["groups"] for rule in g["rules"]]


def test_promql_reader_finds_metrics_and_rejects_unknown_functions() -> None:
    expr = 'sum by (le) (rate(a_bucket{x="rate(b)"}[5m])) / on (route) group_left () sum(c_total offset 1h) > 0.5'
    assert promql_metrics(expr) == {"a_bucket", "c_total"}
    with pytest.raises(ValueError):
        promql_metrics("histogram_quantil(0.5, a_bucket)")


def test_nothing_monitoring_without_monitoring_enabled(helm: pathlib.Path) -> None:
    kinds = {o["kind"] for o in render(helm)}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}


def test_service_monitors_scrape_the_metrics_ports(helm: pathlib.Path) -> None:
    objects = render(helm, MONITORING)
    services = of_kind(objects, "Service")
    monitors = of_kind(objects, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"t-loraops-operator", "t-loraops-router"}
    for monitor in monitors:
        selected = [
            s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [selected[0]["metadata"]["namespace"]]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
            assert DURATION.match(endpoint["interval"])
    extra = render(helm, {**MONITORING, "monitoring.labels": {"release": "prometheus"}})
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert all(o["metadata"]["labels"]["release"] == "prometheus" for o in of_kind(extra, kind))


def test_pod_monitor_matches_the_agent_the_operator_injects(helm: pathlib.Path) -> None:
    """Port name and pod label come from the adapter controller's own sidecar and label constants."""
    container = agent_container(OperatorConfig(), 8000, frozenset())
    monitor = of_kind(render(helm, MONITORING), "PodMonitor")[0]
    assert monitor["spec"]["selector"] == {"matchLabels": {AGENT_LABEL: "true"}}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == [p["name"] for p in container["ports"]]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    scoped = of_kind(render(helm, {**MONITORING, "watchNamespaces": ["team-a"]}), "PodMonitor")[0]
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_alerts_have_the_shape_prometheus_operator_expects(helm: pathlib.Path) -> None:
    rule = of_kind(render(helm, MONITORING), "PrometheusRule")[0]
    groups = rule["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    anchors = _doc_anchors(ROOT / "docs" / "operations.md")
    for alert in alert_rules([rule]):
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert
        assert re.fullmatch(r"Loraops[A-Za-z]+", alert["alert"])
        assert alert["labels"]["severity"] in ("info", "warning", "critical")
        assert "for" not in alert or DURATION.match(alert["for"])
        assert alert["annotations"]["summary"]
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{alert['alert']}: no section #{anchor} in docs/operations.md"


def _doc_anchors(path: pathlib.Path) -> set[str]:
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_alerts_read_exported_metrics(helm: pathlib.Path, exported: set[str]) -> None:
    alerts = alert_rules(render(helm, MONITORING))
    names = {a["alert"] for a in alerts}
    assert {"LoraopsTrainingFailed", "LoraopsAdapterFallbackRateHigh", "LoraopsAdapterCircuitOpen"} <= names
    for alert in alerts:
        metrics = promql_metrics(alert["expr"])
        assert metrics, alert["alert"]
        unknown = metrics - exported - KUBE_STATE_METRICS
        assert not unknown, f"{alert['alert']} reads metrics nothing exports: {unknown}"
        if metrics & KUBE_STATE_METRICS:
            assert alert["alert"] == "LoraopsTrainingFailed"
    without_ksm = alert_rules(render(helm, {**MONITORING, "monitoring.prometheusRule.kubeStateMetrics": False}))
    assert all(not promql_metrics(a["expr"]) & KUBE_STATE_METRICS for a in without_ksm)
    assert "LoraopsTrainingFailed" not in {a["alert"] for a in without_ksm}


def test_alert_thresholds_come_from_values(helm: pathlib.Path) -> None:
    values = {
        **MONITORING,
        "monitoring.prometheusRule.fallbackRateThreshold": 0.2,
        "monitoring.prometheusRule.alertLabels": {"team": "ml"},
    }
    alerts = {a["alert"]: a for a in alert_rules(render(helm, values))}
    assert "> 0.2" in alerts["LoraopsAdapterFallbackRateHigh"]["expr"]
    assert all(a["labels"]["team"] == "ml" for a in alerts.values())


def test_dashboard_queries_read_exported_metrics(exported: set[str]) -> None:
    board = dashboard()
    targets = dashboard_targets(board)
    assert len(targets) >= 15
    read: set[str] = set()
    for title, expr in targets:
        metrics = promql_metrics(expr)
        assert metrics, title
        assert not metrics - exported, f"panel {title!r} reads metrics nothing exports: {metrics - exported}"
        read |= metrics
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert label_values_metric(variable["query"]["query"]) in exported


def test_dashboard_shows_the_per_adapter_figures(exported: set[str]) -> None:
    """Request rate, p50/p95/p99 latency and TTFT, errors, fallback, tokens/s, traffic shares, residency."""
    exprs = [expr for _, expr in dashboard_targets(dashboard())]
    joined = "\n".join(exprs)
    for metric in (
        "loraops_router_request_duration_seconds_bucket",
        "loraops_router_time_to_first_token_seconds_bucket",
    ):
        for quantile in ("0.5", "0.95", "0.99"):
            assert any(f"histogram_quantile({quantile}," in e and metric in e for e in exprs), (metric, quantile)
    for needle in (
        "loraops_router_requests_total",
        'code=~"5.."',
        "loraops_router_fallbacks_total",
        "loraops_router_tokens_total",
        "group_left",  # traffic share per route = adapter's requests over the route's
        "loraops_agent_adapters_loaded",
        "loraops_agent_adapter_info",
        "loraops_router_circuit_state",
    ):
        assert needle in joined, needle
    # Residency per pod (issue 10): which adapter release each vLLM pod holds, by pod.
    residency = [e for e in exprs if "loraops_agent_adapter_info" in e and "pod" in e and "served_name" in e]
    assert residency, "a panel shows the adapters resident on each pod"
    assert any("loraops_agent_probe_latency_seconds_bucket" in e for e in exprs)
    assert any("loraops_agent_unloads_total" in e for e in exprs)
    per_adapter = [e for e in exprs if "loraops_router_" in e and "sum" in e]
    assert all("adapter" in e or "route" in e for e in per_adapter)


def test_dashboard_is_well_formed_and_rendered_verbatim(helm: pathlib.Path) -> None:
    board = dashboard()
    assert board["uid"] == "loraops-adapters" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
    config_map = named(render(helm, MONITORING), "ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["loraops.json"]) == board
    moved = named(render(helm, {**MONITORING, "monitoring.dashboard.namespace": "grafana"}), "ConfigMap", "-dashboard")
    assert moved["metadata"]["namespace"] == "grafana"
