"""Check manifests the way the API server would: schema, strict fields, defaults and CEL rules.

A real cluster rejects bad manifests at `kubectl apply` from the generated CRDs. This module applies the
same CRDs offline, so `loraops validate -f FILE` (CI before GitOps), the tests and dev mode reject the same
manifests with messages that name the field. It uses only the generated schema, never the pydantic models,
so it checks what a cluster would check.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .common import API_VERSION, DNS1123_SUBDOMAIN
from .crd import kind_schema
from .kinds import KINDS_BY_NAME

Schema = dict[str, Any]


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestInvalid(ValueError):
    def __init__(self, kind: str, name: str, errors: list[FieldError]) -> None:
        self.errors = errors
        details = "; ".join(str(e) for e in errors)
        super().__init__(f'{kind} "{name}" is invalid: {details}')


@functools.cache
def schema_for(kind: str) -> Schema:
    return kind_schema(KINDS_BY_NAME[kind])


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Structural defaulting, as the API server does it: a parent's default first, then its children's."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key in value:
            value[key] = apply_defaults(value[key], schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _type_ok(value: Any, expected: str) -> bool:
    if isinstance(value, bool) and expected in ("integer", "number"):
        return False
    if expected == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES[expected])


def schema_errors(value: Any, schema: Schema, path: str) -> Iterator[FieldError]:
    """OpenAPI v3 validation with strict field validation (unknown fields are errors, as `kubectl apply`
    reports them with `--validate=strict`, its default)."""
    expected = schema.get("type")
    if value is None:
        if not schema.get("nullable"):
            yield FieldError(path, f"Invalid value: null: must be of type {expected}")
        return
    if expected and not _type_ok(value, expected):
        yield FieldError(path, f"Invalid value: {value!r}: must be of type {expected}")
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{v}"' for v in schema["enum"])
        yield FieldError(path, f"Unsupported value: {value!r}: supported values: {allowed}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield FieldError(path, f"Too long: may not be more than {schema['maxLength']} characters")
        if "minLength" in schema and len(value) < schema["minLength"]:
            yield FieldError(path, f"Invalid value: {value!r}: must be at least {schema['minLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield FieldError(path, f"Invalid value: {value!r}: should match '{schema['pattern']}'")
    if isinstance(value, int | float) and not isinstance(value, bool):
        yield from _bound_errors(value, schema, path)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            yield FieldError(path, f"Invalid value: must have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield FieldError(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items")
        for index, item in enumerate(value):
            yield from schema_errors(item, schema.get("items", {}), f"{path}[{index}]")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                yield FieldError(f"{path}.{name}", "Required value")
        properties = schema.get("properties")
        for key, sub in value.items():
            child = f"{path}.{key}" if path else key
            if properties is not None:
                if key in properties:
                    yield from schema_errors(sub, properties[key], child)
                elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                    yield FieldError(child, "unknown field")
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from schema_errors(sub, schema["additionalProperties"], child)


def _bound_errors(value: float, schema: Schema, path: str) -> Iterator[FieldError]:
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and value <= low:
            yield FieldError(path, f"Invalid value: {value}: must be greater than {low}")
        elif value < low:
            yield FieldError(path, f"Invalid value: {value}: must be greater than or equal to {low}")
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and value >= high:
            yield FieldError(path, f"Invalid value: {value}: must be less than {high}")
        elif value > high:
            yield FieldError(path, f"Invalid value: {value}: must be less than or equal to {high}")


def cel_errors(value: Any, old: Any, schema: Schema, path: str) -> Iterator[FieldError]:
    """Evaluate every `x-kubernetes-validations` rule where its node is present. Rules that mention
    `oldSelf` are transition rules: they run only on update, where the old value exists too."""
    import cel  # the CEL evaluator is only needed here

    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        variables = {"self": value, "oldSelf": old} if transition else {"self": value}
        try:
            ok = cel.evaluate(rule["rule"], variables)
        except (RuntimeError, TypeError, ValueError) as err:
            ok, rule = False, {**rule, "message": f"{rule.get('message', rule['rule'])} ({err})"}
        if ok is not True:
            where = path + rule.get("fieldPath", "") if path else rule.get("fieldPath", "").lstrip(".")
            yield FieldError(where, f"Invalid value: {rule.get('message') or 'failed rule: ' + rule['rule']}")
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key in value:
                old_sub = old.get(key) if isinstance(old, dict) else None
                yield from cel_errors(value[key], old_sub, sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and "items" in schema:
        # Like the API server, items are paired with their old selves only by position in maps keyed lists;
        # for plain lists no transition rule runs on items.
        for index, item in enumerate(value):
            yield from cel_errors(item, None, schema["items"], f"{path}[{index}]")


def validate(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate (and default) one manifest of a loraops kind. Returns the defaulted object, or raises
    ManifestInvalid listing every error with the field it concerns."""
    kind = manifest.get("kind", "")
    name = str((manifest.get("metadata") or {}).get("name", ""))
    if kind not in KINDS_BY_NAME:
        raise ManifestInvalid(kind or "<no kind>", name, [FieldError("kind", f"not a loraops kind: {kind!r}")])
    errors: list[FieldError] = []
    if manifest.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}, not {manifest.get('apiVersion')!r}"))
    if not name:
        errors.append(FieldError("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > 253 or not re.match(DNS1123_SUBDOMAIN, name):
        errors.append(FieldError("metadata.name", f"Invalid value: {name!r}: a lowercase RFC 1123 subdomain"))
    schema = schema_for(kind)
    obj = apply_defaults(copy.deepcopy(manifest), schema)
    old_obj = apply_defaults(copy.deepcopy(old), schema) if old is not None else None
    errors.extend(schema_errors(obj, schema, ""))
    if not errors:
        # The API server runs CEL rules on well-typed objects only.
        errors.extend(cel_errors(obj, old_obj, schema, ""))
    if errors:
        raise ManifestInvalid(kind, name, errors)
    return obj
