"""The API: generated CRDs match the models, examples validate, bad manifests are rejected by field."""

from __future__ import annotations

import copy
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from loraops.api import KINDS, KINDS_BY_NAME
from loraops.api.crd import crd, file_name
from loraops.api.docs import api_reference
from loraops.api.validation import ManifestInvalid, validate

pytestmark = pytest.mark.api

Manifest = dict[str, Any]


def test_loraops_crds_reproduces_checked_in_crds_byte_for_byte(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    docs = tmp_path / "api.md"
    subprocess.run(
        [sys.executable, "-m", "loraops.cli", "crds", "--out", str(tmp_path / "crds"), "--docs", str(docs)],
        check=True,
        capture_output=True,
    )
    generated = sorted(p.name for p in (tmp_path / "crds").iterdir())
    checked_in = sorted(p.name for p in (repo / "crds").glob("*.yaml"))
    assert generated == checked_in == sorted(file_name(k) for k in KINDS)
    for name in generated:
        assert (tmp_path / "crds" / name).read_bytes() == (repo / "crds" / name).read_bytes(), (
            f"crds/{name} drifted from loraops.api: run `make crds`"
        )
    assert docs.read_text() == (repo / "docs" / "api.md").read_text(), "docs/api.md drifted: run `make crds`"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_each_crd_validates_with_kubernetes_validate(kind: Any, repo: pathlib.Path) -> None:
    document = yaml.safe_load((repo / "crds" / file_name(kind)).read_text())
    kubernetes_validate.validate(document, "1.33", strict=True)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_shape_follows_conventions(kind: Any) -> None:
    spec = crd(kind)["spec"]
    assert spec["names"]["shortNames"] == [kind.short_name]
    assert spec["names"]["categories"] == ["loraops"]
    (version,) = spec["versions"]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], path: str) -> None:
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", "") is not None, f"{path} has a null default"
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(schema, "")
    status = schema["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration", "phase"} <= set(status)
    assert status["conditions"]["x-kubernetes-list-type"] == "map"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_printer_column_points_at_a_schema_field(kind: Any) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for column in kind.columns:
        node = schema
        for part in column.json_path.strip(".").split("."):
            if part in ("metadata",):
                break
            assert part in node.get("properties", {}), f"{column.name}: {column.json_path} not in the schema"
            node = node["properties"][part]
        else:
            assert node["type"] == column.type or (column.type == "date" and node.get("format") == "date-time")


def test_printer_columns_answer_is_it_working() -> None:
    names = {k.short_name: [c.name.upper() for c in k.columns if c.priority == 0] for k in KINDS}
    assert names["la"][:1] == ["BASE"] and {"READY", "EVAL Δ", "PHASE", "AGE"} <= set(names["la"])
    assert {"MODEL", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"} <= set(names["ar"])
    assert {"PHASE", "PROGRESS", "LOSS", "AGE"} <= set(names["lt"])


def test_every_example_validates(examples: dict[str, Manifest]) -> None:
    assert set(examples) == set(KINDS_BY_NAME)
    for manifest in examples.values():
        defaulted = validate(manifest)
        # Defaults applied as the API server would apply them, and the typed models accept the result.
        kind = KINDS_BY_NAME[manifest["kind"]]
        kind.spec.model_validate(defaulted["spec"])


def test_builtin_example_objects_validate(repo: pathlib.Path) -> None:
    for path in sorted((repo / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and not doc["apiVersion"].startswith("loraops.io/"):
                kubernetes_validate.validate(doc, "1.33", strict=True)


def test_defaults_are_applied_like_the_api_server(examples: dict[str, Manifest]) -> None:
    route = examples["AdapterRoute"]
    del route["spec"]["analysis"], route["spec"]["fallback"]
    defaulted = validate(route)["spec"]
    assert defaulted["analysis"]["interval"] == "1m"
    assert defaulted["fallback"] == {
        "mode": "base",
        "timeoutSeconds": 30,
        "circuitBreaker": {"consecutiveFailures": 5, "window": "30s", "cooldown": "30s", "halfOpenProbes": 3},
    }
    training = examples["LoraTraining"]
    del training["spec"]["lora"]
    assert validate(training)["spec"]["lora"]["targetModules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(manifest: Manifest) -> None:
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Callable[[Manifest], None]:
    def mutate(manifest: Manifest) -> None:
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


# (id, kind, mutation, field the error must name, words the message must contain)
BAD_MANIFESTS: list[tuple[str, str, Callable[[Manifest], None], str, str]] = [
    ("missing-base-model", "LoraTraining", _delete("spec.baseModel"), "spec.baseModel", "Required value"),
    ("adapter-missing-base-model", "LoraAdapter", _delete("spec.baseModel"), "spec.baseModel", "Required value"),
    ("rank-zero", "LoraTraining", _set("spec.lora.rank", 0), "spec.lora.rank", "greater than or equal to 1"),
    ("negative-alpha", "LoraTraining", _set("spec.lora.alpha", -8), "spec.lora.alpha", "greater than 0"),
    ("unknown-method", "LoraTraining", _set("spec.method", "qlora4"), "spec.method", "supported values"),
    (
        "both-uri-and-training-ref",
        "LoraAdapter",
        _set("spec.source.trainingRef", {"name": "support-v2"}),
        "spec.source.uri",
        "exactly one of source.uri or source.trainingRef",
    ),
    (
        "neither-uri-nor-training-ref",
        "LoraAdapter",
        _set("spec.source", {}),
        "spec.source.uri",
        "exactly one of source.uri or source.trainingRef",
    ),
    (
        "uri-without-digest",
        "LoraAdapter",
        _delete("spec.source.sha256"),
        "spec.source.sha256",
        "source.sha256 is required",
    ),
    (
        "weights-sum-to-150",
        "AdapterRoute",
        _set("spec.strategy.steps.2", {"weight": 100, "mirror": {"percent": 50}}),
        "spec.strategy.steps[2].weight",
        "sum to more than 100",
    ),
    ("weight-over-100", "AdapterRoute", _set("spec.strategy.steps.2", {"weight": 150}), "steps[2].weight", "100"),
    (
        "step-with-two-actions",
        "AdapterRoute",
        _set("spec.strategy.steps.1", {"cohort": {"tenants": ["acme"]}, "pause": {}}),
        "spec.strategy.steps[1]",
        "exactly one of",
    ),
    ("bad-duration", "AdapterRoute", _set("spec.analysis.interval", "ten minutes"), "spec.analysis.interval", "match"),
    (
        "bad-pause-duration",
        "AdapterRoute",
        _set("spec.strategy.steps.3.pause.duration", "10 mins"),
        "spec.strategy.steps[3].pause.duration",
        "match",
    ),
    (
        "adapter-name-too-long",
        "LoraAdapter",
        _set("metadata.name", "support-" + "x" * 60),
        "metadata.name",
        "at most 63 characters",
    ),
    (
        "reference-name-too-long",
        "LoraAdapter",
        _set("spec.serving.deployment", "d" * 254),
        "spec.serving.deployment",
        "Too long",
    ),
    (
        "secret-inlined-instead-of-reference",
        "LoraTraining",
        _set("spec.output.credentialsSecretRef", {"name": "s3-writer", "secretAccessKey": "wJalrXUtnFEMI"}),
        "spec.output.credentialsSecretRef.secretAccessKey",
        "unknown field",
    ),
    (
        "secret-value-where-reference-required",
        "LoraAdapter",
        _set("spec.source.credentialsSecretRef", "AKIAIOSFODNN7EXAMPLE"),
        "spec.source.credentialsSecretRef",
        "must be of type object",
    ),
    ("bad-digest", "LoraAdapter", _set("spec.source.sha256", "abc123"), "spec.source.sha256", "match"),
    ("bad-uri-scheme", "LoraTraining", _set("spec.output.uri", "ftp://x/y"), "spec.output.uri", "match"),
    ("uppercase-tenant-rule-adapter", "AdapterRoute", _set("spec.adapter", "Support_V1"), "spec.adapter", "match"),
    ("dropout-one", "LoraTraining", _set("spec.lora.dropout", 1.0), "spec.lora.dropout", "less than 1"),
    ("unknown-eval-metric", "LoraAdapter", _set("spec.evaluation.metrics", ["bleu"]), "metrics[0]", "supported"),
    ("missing-provenance-owner", "LoraAdapter", _delete("spec.provenance.owner"), "provenance.owner", "Required"),
    (
        "prometheus-without-url",
        "AdapterRoute",
        _set("spec.analysis.provider", {"type": "prometheus"}),
        "spec.analysis.provider.url",
        "url is required",
    ),
    ("bad-object-name", "LoraTraining", _set("metadata.name", "Support_V2"), "metadata.name", "RFC 1123"),
    ("wrong-api-version", "LoraTraining", _set("apiVersion", "loraops.io/v1"), "apiVersion", "v1alpha1"),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "field", "words"), [b[1:] for b in BAD_MANIFESTS], ids=[b[0] for b in BAD_MANIFESTS]
)
def test_bad_manifest_is_rejected_naming_the_field(
    examples: dict[str, Manifest], kind: str, mutate: Callable[[Manifest], None], field: str, words: str
) -> None:
    manifest = copy.deepcopy(examples[kind])
    mutate(manifest)
    with pytest.raises(ManifestInvalid) as caught:
        validate(manifest)
    matching = [e for e in caught.value.errors if field in str(e)]
    assert matching, f"no error names {field}: {caught.value}"
    assert any(words in e.message for e in matching), f"{field}: {[e.message for e in matching]}"


def test_cli_validate_reports_the_field_and_fails(tmp_path: pathlib.Path, examples: dict[str, Manifest]) -> None:
    bad = copy.deepcopy(examples["LoraTraining"])
    bad["spec"]["lora"]["rank"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [sys.executable, "-m", "loraops.cli", "validate", "-f", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "spec.lora.rank" in result.stdout and "INVALID" in result.stdout


# ---- immutability (CEL transition rules, evaluated with the old object) ----


def test_adapter_digest_is_immutable_once_set(examples: dict[str, Manifest]) -> None:
    old = examples["LoraAdapter"]
    new = copy.deepcopy(old)
    new["spec"]["source"]["sha256"] = "0" * 64
    with pytest.raises(ManifestInvalid, match=r"source\.sha256 is immutable"):
        validate(new, old=old)
    unchanged = copy.deepcopy(old)
    unchanged["spec"]["tenants"] = ["acme"]  # other fields may change
    validate(unchanged, old=old)


def test_adapter_base_model_is_immutable(examples: dict[str, Manifest]) -> None:
    old = examples["LoraAdapter"]
    new = copy.deepcopy(old)
    new["spec"]["baseModel"] = "mistralai/Mistral-7B-v0.3"
    with pytest.raises(ManifestInvalid, match=r"spec\.baseModel is immutable"):
        validate(new, old=old)


def test_training_spec_is_immutable_except_suspend(examples: dict[str, Manifest]) -> None:
    old = examples["LoraTraining"]
    suspended = copy.deepcopy(old)
    suspended["spec"]["suspend"] = True
    validate(suspended, old=old)
    for mutate in (_set("spec.lora.rank", 32), _set("spec.method", "dora"), _delete("spec.loraPlusRatio")):
        changed = copy.deepcopy(old)
        mutate(changed)
        with pytest.raises(ManifestInvalid, match=r"immutable except spec\.suspend"):
            validate(changed, old=old)


def test_api_reference_documents_every_spec_field() -> None:
    reference = api_reference()
    for kind in KINDS:
        for name, info in kind.spec.model_fields.items():
            assert f"`spec.{info.alias or name}`" in reference, f"{kind.kind}.spec.{name} undocumented"
    assert "exactly one of source.uri or source.trainingRef" in reference


# ---- property test: the step rules agree with their plain-language meaning ----

step_strategy = st.fixed_dictionaries(
    {},
    optional={
        "mirror": st.builds(lambda p: {"percent": p}, st.integers(1, 100)),
        "cohort": st.just({"tenants": ["acme"]}),
        "weight": st.integers(0, 100),
        "pause": st.one_of(st.just({}), st.just({"duration": "5m"})),
    },
)


@settings(max_examples=150, deadline=None)
@given(step=step_strategy)
def test_step_rule_matches_its_meaning(step: dict[str, Any]) -> None:
    manifest = {
        "apiVersion": "loraops.io/v1alpha1",
        "kind": "AdapterRoute",
        "metadata": {"name": "r"},
        "spec": {
            "model": "m",
            "base": {"deployment": "d", "service": "s", "servedModel": "base"},
            "strategy": {"steps": [step]},
        },
    }
    kinds = {k for k in ("mirror", "cohort", "weight", "pause") if k in step}
    one_action = len(kinds) == 1 or kinds == {"weight", "mirror"}
    within_100 = kinds != {"weight", "mirror"} or step["weight"] + step["mirror"]["percent"] <= 100
    try:
        validate(manifest)
        accepted = True
    except ManifestInvalid:
        accepted = False
    assert accepted == (one_action and within_100)


def test_demo_examples_validate(repo: pathlib.Path) -> None:
    documents = [
        d for p in sorted((repo / "examples" / "demo").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]
    assert {d["kind"] for d in documents} == {"ConfigMap", "LoraTraining", "LoraAdapter", "AdapterRoute"}
    for document in documents:
        if document["apiVersion"].startswith("loraops.io/"):
            validate(document)
        else:
            kubernetes_validate.validate(document, "1.33", strict=True)
