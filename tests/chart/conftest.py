from __future__ import annotations

import pathlib

import pytest

from .support import exported_metrics, helm_binary


@pytest.fixture(scope="session")
def helm() -> pathlib.Path:
    return helm_binary()


@pytest.fixture(scope="session")
def exported() -> set[str]:
    names = exported_metrics()
    # The collector must see all three components, or every "metric exists" check below would be vacuous.
    assert {"loraops_reconcile_total", "loraops_router_requests_total", "loraops_agent_adapters_loaded"} <= names
    return names
