"""e2e: `loraops dev demo --headless` plays the whole story and leaves nothing running.

Named to run after the tests that share the session vLLM server: after a demo (its own vLLM on the same tiny
model) the shared server once answered a zero-B adapter differently from its base (under investigation).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.chart, pytest.mark.rollout]


def running_under(folder: pathlib.Path) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if str(folder) in line and "ps -eo" not in line]


def test_demo_plays_every_stage_with_zero_failed_requests(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loraops.cli", "dev", "demo", "--headless", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    # training: both Succeeded with progress on the way
    assert re.search(r"support-v1\s+tiny-llama\s+lora\s+Succeeded\s+100", out)
    assert re.search(r"support-v2\s+tiny-llama\s+lora\s+Succeeded\s+100", out)
    assert len(re.findall(r"support-v1:\s+\d+%", out)) >= 2, "progress was shown on the way"
    # release: verified, loaded on the replica, evaluated against the base
    assert re.search(r"support-v1\s+tiny-llama\s+1\.0\.0\s+1/1\s+\S+\s+Ready", out)
    assert re.search(r"support-v2: exact_match base [\d.]+ → adapter [\d.]+\s+Δ", out)
    # canary walked its steps and promoted v2
    for step in ("mirror 30%", "cohort acme", "weight 20%", "weight 50%"):
        assert step in out
    assert re.search(r"support-bot\s+support-bot\s+support-v2\s+Healthy", out)
    # the broken v3 rolled back, clients never saw an error
    assert "rolled back support-v3" in out and re.search(r"support-bot\s+support-bot\s+support-v2\s+RolledBack", out)
    sent, failed = map(int, re.search(r"client requests: (\d+), failed: (\d+)", out).groups())  # type: ignore[union-attr]
    assert sent > 100 and failed == 0
    assert "everything it started has stopped" in out
    assert running_under(tmp_path) == [], "the demo left processes running"
    assert_dashboard_reads_live_metrics(tmp_path / "demo" / "metrics")


def assert_dashboard_reads_live_metrics(folder: pathlib.Path) -> None:
    """Every series the Grafana dashboard queries is exposed by a live operator, router or agent."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.chart.support import SUFFIXES, dashboard, dashboard_targets, promql_metrics

    live: set[str] = set()
    for page in folder.glob("*.prom"):
        for family in text_string_to_metric_families(page.read_text()):
            live.update(family.name + suffix for suffix in SUFFIXES[family.type])
    assert {"operator.prom", "router.prom", "agent.prom"} <= {p.name for p in folder.glob("*.prom")}
    read = {metric for _, expr in dashboard_targets(dashboard()) for metric in promql_metrics(expr)}
    assert read and not read - live, f"the dashboard reads series no live process exposes: {sorted(read - live)}"
