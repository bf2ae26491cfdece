"""CRDs generated from the pydantic models: structural schema, defaults, CEL rules, printer columns.

pydantic emits JSON Schema (draft 2020-12 flavour, with `$ref`, `anyOf`-null, `title`, `exclusiveMinimum`
numbers). A Kubernetes structural schema is OpenAPI v3.0: no `$ref`, a `type` at every level, boolean
`exclusiveMinimum`, no `additionalProperties` beside `properties`. `structural()` does that translation.
"""

from __future__ import annotations

import pathlib
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .kinds import CATEGORY, KINDS, Kind

KEEP = {
    "type", "description", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "format", "default", "properties",
    "required", "items", "additionalProperties", "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "nullable",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}  # fmt: skip


class _Generator(GenerateJsonSchema):
    """Emits defaults of `default_factory` fields too, so the API server applies them."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        # An empty object lets the API server fill in the nested defaults.
        return {} if isinstance(value, BaseModel) else value

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", 0) is None:
            json_schema.pop("default")
        return json_schema


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    return structural(raw, raw.get("$defs", {}))


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON Schema node into a Kubernetes structural schema node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the referring field's description/default win
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in API model: {options}")
        inner = structural(options[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if isinstance(node.get("exclusiveMaximum"), int | float) and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    out: dict[str, Any] = {}
    for key in ("description", "type"):
        if key in node:
            out[key] = node[key]
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    for key, value in node.items():
        if key not in KEEP or key in out:
            continue
        if key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "additionalProperties":
            if "properties" in node:
                continue  # extra="forbid": strict field validation rejects unknown fields instead
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out["additionalProperties"] = structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def kind_schema(kind: Kind) -> dict[str, Any]:
    """The openAPIV3Schema of one kind."""
    spec = model_schema(kind.spec)
    if kind.spec_rules:
        spec["x-kubernetes-validations"] = [*spec.get("x-kubernetes-validations", []), *kind.spec_rules]
    status = model_schema(kind.status)
    schema: dict[str, Any] = {
        "description": kind.description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if kind.root_rules:
        schema["x-kubernetes-validations"] = list(kind.root_rules)
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "loraops"}},
        "spec": {
            "group": kind.group,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short_name],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": kind.version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.crd() for c in kind.columns],
                    "schema": {"openAPIV3Schema": kind_schema(kind)},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full: YAML anchors would make the CRDs hard to read and diff."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(kind: Kind) -> str:
    header = "# Generated by `loraops crds` from loraops.api: do not edit by hand.\n"
    body = yaml.dump(crd(kind), Dumper=_NoAliasDumper, sort_keys=False, width=120, allow_unicode=True)
    return header + body


def file_name(kind: Kind) -> str:
    return f"{kind.group}_{kind.plural}.yaml"


def write_crds(out_dir: pathlib.Path) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = out_dir / file_name(kind)
        path.write_text(render(kind), encoding="utf-8")
        written.append(path)
    return written
