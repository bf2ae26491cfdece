"""Pure helpers of the fake Kubernetes API: selectors, patches, JSONPath, timestamps.

No I/O here, so each rule is checked in isolation and shared by the store and the HTTP layer.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]
Matcher = Callable[[Mapping[str, Any]], bool]


class ApiError(Exception):
    """An answer in the shape of a Kubernetes `Status` (what clients parse to raise their own errors)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_age(stamp: str | None) -> str | None:
    """Age as kubectl prints it ("42s", "7m", "3h", "2d"): the apiserver formats date columns so."""
    if not stamp:
        return None
    try:
        then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return stamp
    secs = max(0, int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "m" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


# --- selectors --------------------------------------------------------------------------------------


def _split_top(text: str) -> list[str]:
    # Commas inside `in (a,b)` belong to the value set, not to the list of requirements.
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_RE = re.compile(r"^([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)$")


def label_matcher(selector: str | None) -> Matcher:
    """Compile a label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) into a predicate."""
    # Each requirement: (key, allowed values or None for "present", negated).
    reqs: list[tuple[str, frozenset[str] | None, bool]] = []
    for req in _split_top(selector or ""):
        if m := _SET_RE.match(req):
            vals = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append((m.group(1), vals, m.group(2) == "notin"))
        elif m := _EQ_RE.match(req):
            reqs.append((m.group(1), frozenset([m.group(3)]), m.group(2) == "!="))
        elif re.fullmatch(r"!?\s*[\w./-]+", req):
            reqs.append((req.lstrip("!").strip(), None, req.startswith("!")))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {req!r}")

    def match(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for key, vals, neg in reqs:
            hit = key in labels if vals is None else labels.get(key) in vals
            if hit == neg:
                return False
        return True

    return match


def field_matcher(selector: str | None) -> Matcher:
    """Compile a field selector; any dotted path is accepted (the real API allows a fixed few per kind)."""
    reqs: list[tuple[list[str], str, bool]] = []
    for req in _split_top(selector or ""):
        m = re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", req)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {req!r}")
        reqs.append((m.group(1).split("."), m.group(3), m.group(2) == "!="))
    return lambda obj: all((_field(obj, path) == val) != neg for path, val, neg in reqs)


def _field(obj: Any, path: list[str]) -> str:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    if isinstance(obj, bool):
        return "true" if obj else "false"
    return "" if obj is None else str(obj)


# --- patches ----------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch; strategic-merge patches use it too (list merge keys are not emulated)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def json_patch(doc: Obj, ops: Any) -> Obj:
    """RFC 6902 JSON patch. A failed `test` answers 422 as the apiserver does (kopf's finalizer relies on it)."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        try:
            if kind == "test":
                target: Any = doc
                for part in parts:
                    target = target[int(part)] if isinstance(target, list) else target[part]
                if target != op.get("value"):
                    raise ApiError(422, "Invalid", f"the test operation failed at {op.get('path')!r}")
                continue
            if kind in ("move", "copy"):
                src_parent, src_key = _parent(doc, _pointer(op["from"]))
                is_list = isinstance(src_parent, list)
                value = src_parent[int(src_key)] if is_list else src_parent[src_key]
                if kind == "move":
                    del src_parent[int(src_key) if is_list else src_key]
                op = {"op": "add", "path": op["path"], "value": copy.deepcopy(value)}
                kind = "add"
            if not parts:
                if kind in ("add", "replace"):
                    doc = copy.deepcopy(op["value"])
                    continue
                raise ApiError(422, "Invalid", "cannot remove the whole document")
            parent, key = _parent(doc, parts)
            if isinstance(parent, list):
                idx = len(parent) if key == "-" else int(key)
                if kind == "add":
                    parent.insert(idx, copy.deepcopy(op["value"]))
                elif kind == "replace":
                    parent[idx] = copy.deepcopy(op["value"])
                elif kind == "remove":
                    del parent[idx]
                else:
                    raise ApiError(400, "BadRequest", f"unknown JSON patch operation: {kind!r}")
            elif kind == "add" or (kind == "replace" and key in parent):
                parent[key] = copy.deepcopy(op["value"])
            elif kind in ("remove", "replace"):
                if key not in parent:
                    raise ApiError(422, "Invalid", f"path {op.get('path')!r} does not exist")
                del parent[key]
            else:
                raise ApiError(400, "BadRequest", f"unknown JSON patch operation: {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"cannot apply {kind} at {op.get('path')!r}: {exc!r}") from exc
    return doc


# --- JSONPath (the subset printer columns use) ------------------------------------------------------

_JP_TOKEN = re.compile(
    r"\.(?P<key>[A-Za-z0-9_\-]+)|\[(?P<idx>-?\d+|\*)\]|\['(?P<qkey>[^']+)'\]"
    r"|\[\?\(@\.(?P<fpath>[\w.]+)\s*(?P<fop>==|!=)\s*[\"']?(?P<fval>[^\"')]*)[\"']?\)\]"
)


def jsonpath(obj: Any, expr: str) -> list[Any]:
    """Evaluate `.a.b[0]`, `.a[*].b`, `.a[?(@.type=="Ready")].status` and `{...}`-wrapped forms."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1].strip()
    expr = expr.removeprefix("$")
    values, pos = [obj], 0
    while pos < len(expr):
        m = _JP_TOKEN.match(expr, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for v in values:
            if (key := m.group("key") or m.group("qkey")) is not None:
                if isinstance(v, Mapping) and key in v:
                    nxt.append(v[key])
            elif (idx := m.group("idx")) is not None:
                if isinstance(v, list):
                    if idx == "*":
                        nxt.extend(v)
                    elif -len(v) <= int(idx) < len(v):
                        nxt.append(v[int(idx)])
                elif isinstance(v, Mapping) and idx == "*":
                    nxt.extend(v.values())
            elif isinstance(v, list):
                fpath, neg, fval = m.group("fpath").split("."), m.group("fop") == "!=", m.group("fval")
                nxt.extend(i for i in v if isinstance(i, Mapping) and (_field(i, fpath) == fval) != neg)
        values = nxt
    return values


def cell(obj: Mapping[str, Any], column: Mapping[str, Any]) -> Any:
    """One Table cell for a CRD printer column, formatted the way the apiserver formats it."""
    found = jsonpath(obj, str(column.get("jsonPath", "")))
    if not found or found[0] is None:
        return None
    if column.get("type") == "date":
        return human_age(str(found[0]))
    if len(found) > 1:
        return ",".join(v if isinstance(v, str) else json.dumps(v) for v in found)
    value = found[0]
    return value if isinstance(value, str | int | float | bool) else json.dumps(value)
