"""`requireSignedAdapters` in the chart: rendered into operator flags that the operator parses into its policy."""

from __future__ import annotations

import pathlib

import pytest

from loraops.cli import build_parser
from loraops.runtime import operator_config

from .support import CHART, named, render, run_helm, set_args

pytestmark = [pytest.mark.chart, pytest.mark.adapters]


def test_the_policy_value_becomes_operator_flags_and_the_operator_config(helm: pathlib.Path) -> None:
    objects = render(helm, {"requireSignedAdapters": ["*", "team-a"]})
    (container,) = named(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"]
    flags = [a for a in container["args"] if a.startswith("--require-signed-adapters")]
    assert flags == ["--require-signed-adapters=*", "--require-signed-adapters=team-a"]
    parser, _ = build_parser()
    config = operator_config(parser.parse_args(container["args"]))
    assert config.require_signed_adapters == ["*", "team-a"]
    assert config.requires_signature("any-namespace")


def test_by_default_no_namespace_requires_signatures(helm: pathlib.Path) -> None:
    (container,) = named(render(helm), "Deployment", "-operator")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--require-signed")]
    parser, _ = build_parser()
    config = operator_config(parser.parse_args(container["args"]))
    assert config.require_signed_adapters == [] and not config.requires_signature("team-a")


def test_a_namespace_that_is_not_a_name_is_refused_by_the_values_schema(helm: pathlib.Path) -> None:
    values = set_args({"requireSignedAdapters": ["Team_A"]})
    result = run_helm(helm, "template", "x", str(CHART), *values, check=False)
    assert result.returncode != 0 and "requireSignedAdapters" in result.stderr
