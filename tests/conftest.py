"""Shared fixtures: repository paths and example manifests."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent


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
