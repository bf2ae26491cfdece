"""values.schema.json rejects wrong types, unknown keys and inconsistent settings at install time."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from .support import CHART, NAMESPACE, render, run_helm, set_args

pytestmark = pytest.mark.chart

SCHEMA_ERROR = "values don't meet the specifications of the schema"


def rejected(helm: pathlib.Path, values: dict[str, Any], *raw: str) -> str:
    args = ["template", "t", str(CHART), "-n", NAMESPACE, "--kube-version", "1.33.0", *set_args(values), *raw]
    done = run_helm(helm, *args, check=False)
    assert done.returncode != 0, f"accepted: {values} {raw}"
    return done.stderr


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"operator.replicas": "two"}, "/operator/replicas"),
        ({"monitoring.enabled": "yes"}, "/monitoring/enabled"),
        ({"router.port": 70000}, "/router/port"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"image.digest": "latest"}, "/image/digest"),
        ({"operator.controllers": ["training", "billing"]}, "/operator/controllers/1"),
        ({"operator.routerMetricsUrls": ["router:8080/metrics"]}, "/operator/routerMetricsUrls/0"),
        ({"monitoring.prometheusRule.fallbackRateThreshold": 2}, "/monitoring/prometheusRule/fallbackRateThreshold"),
        ({"monitoring.interval": "30 seconds"}, "/monitoring/interval"),
    ],
)
def test_wrong_types_and_values_are_rejected(helm: pathlib.Path, values: dict[str, Any], where: str) -> None:
    stderr = rejected(helm, values)
    assert SCHEMA_ERROR in stderr and where in stderr, stderr


def test_unknown_keys_are_rejected(helm: pathlib.Path) -> None:
    assert "routerr" in rejected(helm, {"routerr": {"enabled": False}})
    assert "replica" in rejected(helm, {"operator.replica": 2})  # a typo of replicas


def test_namespaced_rbac_needs_namespaces(helm: pathlib.Path) -> None:
    assert SCHEMA_ERROR in rejected(helm, {"rbac.namespaced": True})
    assert render(helm, {"rbac.namespaced": True, "watchNamespaces": ["team-a"]})


def test_the_schema_is_self_contained() -> None:
    """A remote $ref would make offline installs fail; every object level with fixed keys is closed."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    text = json.dumps(schema)
    assert '"$ref"' not in text and '"$id"' not in text

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} is open"
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(schema, "")


def test_default_values_satisfy_the_schema_and_every_key_is_described() -> None:
    import jsonschema
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(values, schema)

    def keys(node: Any, prefix: str = "") -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            for key, value in node.items():
                found.add(prefix + key)
                if isinstance(value, dict) and value:
                    found |= keys(value, f"{prefix}{key}.")
        return found

    def schema_keys(node: Any, prefix: str = "") -> set[str]:
        found: set[str] = set()
        for key, value in (node.get("properties") or {}).items():
            found.add(prefix + key)
            found |= schema_keys(value, f"{prefix}{key}.")
        return found

    free_form = ("resources.", "podSecurityContext.", "securityContext.", "nodeSelector.", "labels.", "podSelector.")
    value_keys = {k for k in keys(values) if not any(f in k for f in free_form)}
    assert value_keys <= schema_keys(schema) | {"global"}
