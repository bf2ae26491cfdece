"""`loraops dev demo` runs what is built, end to end, and leaves nothing running."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.operator


def test_dev_demo_headless_plays_and_exits(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loraops.cli", "dev", "demo", "--headless", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loraadapter.loraops.io/support-v1 created" in result.stdout
    assert "== summary" in result.stdout
    assert (tmp_path / "demo" / "kubeconfig").exists()
