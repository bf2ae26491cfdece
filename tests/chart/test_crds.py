"""The chart carries the generated CRDs unchanged (copied by `make crds`), plus kopf's peering CRDs."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from .support import CHART, ROOT, render

pytestmark = pytest.mark.chart

PEERING_FILE = "kopf.dev_peerings.yaml"


def test_chart_crds_are_byte_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert source, "crds/ is empty"
    assert set(chart) == set(source) | {PEERING_FILE}, "run `make crds` to refresh charts/loraops/crds/"
    for name, data in source.items():
        assert chart[name] == data, f"charts/loraops/crds/{name} differs from crds/{name}: run `make crds`"


def test_rendered_crds_equal_crds(helm: pathlib.Path) -> None:
    rendered = {o["metadata"]["name"]: o for o in render(helm, crds=True) if o["kind"] == "CustomResourceDefinition"}
    expected = {}
    for path in (ROOT / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            expected[doc["metadata"]["name"]] = doc
    assert {"loratrainings.loraops.io", "loraadapters.loraops.io", "adapterroutes.loraops.io"} <= set(expected)
    for name, crd in expected.items():
        assert rendered[name] == crd, name
    assert set(rendered) - set(expected) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_peering_crds_match_the_selectors_kopf_uses() -> None:
    from kopf._cogs.structs import references

    docs = list(yaml.safe_load_all((CHART / "crds" / PEERING_FILE).read_text(encoding="utf-8")))
    served = {(d["spec"]["group"], d["spec"]["names"]["plural"], d["spec"]["scope"]) for d in docs}
    assert served == {("kopf.dev", "clusterkopfpeerings", "Cluster"), ("kopf.dev", "kopfpeerings", "Namespaced")}
    for selector in (references.CLUSTER_PEERINGS_K, references.NAMESPACED_PEERINGS_K):
        assert (selector.group, selector.any_name) in {(g, p) for g, p, _ in served}


def test_make_crds_copies_into_the_chart() -> None:
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8").split("\ncrds:", 1)[1].split("\n\n", 1)[0]
    assert "cp crds/*.yaml charts/loraops/crds/" in recipe
