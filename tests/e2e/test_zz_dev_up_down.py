"""e2e: `loraops dev up` brings the whole environment up; `loraops dev down` stops it and nothing stays."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest

from tests.e2e.test_zz_demo import running_under

pytestmark = [pytest.mark.e2e, pytest.mark.chart]


def test_up_serves_kubectl_and_down_leaves_nothing(tmp_path: pathlib.Path) -> None:
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "loraops.cli", "dev", "up", "--state", str(tmp_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while "stop with Ctrl-C" not in (tmp_path / "up.log").read_text() and time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(0.5)
        kubeconfig = tmp_path / "up" / "kubeconfig"
        kubectl = [str(pathlib.Path(sys.executable).parent / "kubectl"), "--kubeconfig", str(kubeconfig),
                   "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
        listed = subprocess.run([*kubectl, "get", "deployments,services"], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "tiny-vllm" in listed.stdout, listed.stderr
        down = subprocess.run(
            [sys.executable, "-m", "loraops.cli", "dev", "down", "--state", str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert down.returncode == 0 and "stopped" in down.stdout
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    time.sleep(1)
    assert running_under(tmp_path) == [], "dev down left processes running"
    assert not (tmp_path / "dev.pid").exists()
