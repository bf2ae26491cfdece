"""The object store behind the fake API: apiserver semantics on plain dicts, with no I/O.

Every method is synchronous and runs on the server's event loop only, so one call is atomic with respect
to watchers: a watch that snapshots and subscribes in one step can neither miss nor duplicate an event.
"""

from __future__ import annotations

import base64
import collections
import copy
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from loraops.devmode.kutil import ApiError, Matcher, Obj, json_patch, merge_patch, now_rfc3339

RKey = tuple[str, str]  # (group, plural): all served versions of a resource share one storage
OKey = tuple[str | None, str]  # (namespace, name)
CRD_KEY: RKey = ("apiextensions.k8s.io", "customresourcedefinitions")
# The same alphabet as the apiserver's generateName suffixes (no vowels, no look-alike digits).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class ResourceDef:
    group: str
    plural: str
    kind: str
    namespaced: bool
    versions: list[str]  # served versions, the preferred (storage) one first
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    subresources: set[str] = field(default_factory=set)
    verbs: list[str] = field(default_factory=lambda: ["create", "delete", "get", "list", "patch", "update", "watch"])
    columns: dict[str, list[Obj]] = field(default_factory=dict)  # version -> additionalPrinterColumns

    @property
    def key(self) -> RKey:
        return (self.group, self.plural)

    def api_version(self, version: str | None = None) -> str:
        version = version or self.versions[0]
        return f"{self.group}/{version}" if self.group else version


class Event(NamedTuple):
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None  # the previous state: selector watches turn MODIFIED into ADDED/DELETED with it


def resource_defs_from_crd(crd: Mapping[str, Any]) -> ResourceDef:
    spec, names = crd.get("spec") or {}, (crd.get("spec") or {}).get("names") or {}
    served = [v for v in spec.get("versions") or [] if v.get("served", True)]
    served.sort(key=lambda v: not v.get("storage", False))
    if not spec.get("group") or not names.get("plural") or not names.get("kind") or not served:
        raise ApiError(422, "Invalid", "a CRD needs spec.group, spec.names.plural/kind and a served version")
    return ResourceDef(
        group=spec["group"],
        plural=names["plural"],
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        versions=[v["name"] for v in served],
        singular=names.get("singular") or names["kind"].lower(),
        short_names=list(names.get("shortNames") or []),
        categories=list(names.get("categories") or []),
        subresources={s for v in served for s in (v.get("subresources") or {})},
        columns={v["name"]: list(v.get("additionalPrinterColumns") or []) for v in served},
    )


def _fold_string_data(rdef: ResourceDef, obj: Obj) -> None:
    # Secrets accept write-only `stringData`; the apiserver stores it base64-encoded under `data`.
    if rdef.key == ("", "secrets") and isinstance(obj.get("stringData"), Mapping):
        encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()}
        obj["data"] = {**(obj.get("data") or {}), **encoded}


class Store:
    def __init__(self, *, event_log_limit: int = 1000) -> None:
        self.rv = 0
        self.defs: dict[RKey, ResourceDef] = {}
        self.objects: dict[RKey, dict[OKey, Obj]] = collections.defaultdict(dict)
        self.by_uid: dict[str, tuple[RKey, OKey]] = {}
        self.dependents: dict[str, set[tuple[RKey, OKey]]] = collections.defaultdict(set)
        self.events: dict[RKey, collections.deque[Event]] = collections.defaultdict(
            lambda: collections.deque(maxlen=event_log_limit)
        )
        self.compacted: dict[RKey, int] = collections.defaultdict(int)  # newest rv evicted from the log
        self.watchers: dict[RKey, set[Callable[[Event], None]]] = collections.defaultdict(set)
        # Hooks for the HTTP layer: background work (GC) and a mirror of every write (kmock's history).
        self.defer: Callable[[Callable[[], None]], None] = lambda fn: fn()
        self.on_write: Callable[[ResourceDef, Obj, bool], None] = lambda rdef, obj, gone: None

    # --- registry -----------------------------------------------------------------------------------
    def register(self, rdef: ResourceDef) -> None:
        self.defs[rdef.key] = rdef

    def register_crd_def(self, crd: Mapping[str, Any]) -> ResourceDef:
        rdef = resource_defs_from_crd(crd)
        self.register(rdef)
        return rdef

    def resolve(self, name: str) -> ResourceDef:
        """Find a resource by plural, `plural.group`, `group/version/plural`, `v1/plural`, kind or short name."""
        lname = name.lower()
        if "/" in lname:
            *gv, plural = lname.split("/")
            group = gv[0] if len(gv) == 2 else ""
            if (group, plural) in self.defs:
                return self.defs[group, plural]
        plural, _, group = lname.partition(".")
        if group and (group, plural) in self.defs:
            return self.defs[group, plural]
        # Core resources first, the way kubectl prefers them, then any group.
        for rdef in sorted(self.defs.values(), key=lambda d: (d.group != "", d.group)):
            if lname in (rdef.plural, rdef.singular, rdef.kind.lower(), *rdef.short_names):
                return rdef
        raise ApiError(404, "NotFound", f"the server doesn't have a resource type {name!r}")

    # --- reads --------------------------------------------------------------------------------------
    def get(self, rdef: ResourceDef, ns: str | None, name: str) -> Obj:
        obj = self.objects[rdef.key].get((ns if rdef.namespaced else None, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rdef.plural}.{rdef.group or "core"} "{name}" not found')
        return obj

    def list(self, rdef: ResourceDef, ns: str | None, match: Matcher | None = None) -> list[Obj]:
        objs = self.objects[rdef.key]
        found = [o for (ons, _), o in objs.items() if (ns is None or ons == ns) and (not match or match(o))]
        return sorted(found, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    # --- writes -------------------------------------------------------------------------------------
    def _bump(self, obj: Obj) -> int:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return self.rv

    def _emit(self, rdef: ResourceDef, kind: str, obj: Obj, old: Obj | None) -> None:
        log = self.events[rdef.key]
        if log.maxlen is not None and len(log) == log.maxlen:
            self.compacted[rdef.key] = log[0].rv
        event = Event(int(obj["metadata"]["resourceVersion"]), kind, obj, old)
        log.append(event)
        self.on_write(rdef, obj, kind == "DELETED")
        for watcher in list(self.watchers[rdef.key]):
            watcher(event)

    def _index(self, rdef: ResourceDef, okey: OKey, old: Obj | None, new: Obj | None) -> None:
        for o, add in ((old, False), (new, True)):
            if o is None:
                continue
            meta = o["metadata"]
            for ref in meta.get("ownerReferences") or []:
                if ref.get("uid"):
                    deps = self.dependents[ref["uid"]]
                    if add:
                        deps.add((rdef.key, okey))
                    else:
                        deps.discard((rdef.key, okey))
                        if not deps:
                            del self.dependents[ref["uid"]]
            if add:
                self.by_uid[meta["uid"]] = (rdef.key, okey)
            else:
                self.by_uid.pop(meta["uid"], None)

    def create(
        self,
        rdef: ResourceDef,
        ns: str | None,
        body: Mapping[str, Any],
        version: str | None = None,
        *,
        seed_status: bool = False,
    ) -> Obj:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if rdef.namespaced:
            if ns and meta.get("namespace") and meta["namespace"] != ns:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            ns = ns or meta.get("namespace") or "default"
            meta["namespace"] = ns
        else:
            ns = None
            meta.pop("namespace", None)
        _fold_string_data(rdef, obj)
        if "status" in rdef.subresources and not seed_status:
            obj.pop("status", None)  # the main endpoint never writes status once it is a subresource
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            for _ in range(20):  # a clash of 5-char suffixes happens (one in ~500 was seen): retry
                name = meta["generateName"] + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
                if (ns, name) not in self.objects[rdef.key]:
                    meta["name"] = name
                    break
        if (ns, meta.get("name")) in self.objects[rdef.key]:
            raise ApiError(409, "AlreadyExists", f'{rdef.plural} "{meta["name"]}" already exists')
        if rdef.key == CRD_KEY:
            served = self.register_crd_def(obj)
            # kubectl and kopf wait for these conditions before they use a new kind.
            obj.setdefault("status", {}).update(
                {
                    "acceptedNames": obj["spec"]["names"],
                    "storedVersions": served.versions[:1],
                    "conditions": [
                        {"type": t, "status": "True", "reason": t, "lastTransitionTime": now_rfc3339()}
                        for t in ("NamesAccepted", "Established")
                    ],
                }
            )
        obj["apiVersion"], obj["kind"] = rdef.api_version(version), rdef.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        for server_only in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(server_only, None)
        self._bump(obj)
        okey = (ns, meta["name"])
        self.objects[rdef.key][okey] = obj
        self._index(rdef, okey, None, obj)
        self._emit(rdef, "ADDED", obj, None)
        return obj

    def update(
        self,
        rdef: ResourceDef,
        ns: str | None,
        name: str,
        change: Callable[[Obj], Obj],
        subresource: str | None = None,
    ) -> Obj:
        """Apply `change` to a copy of the object; PUT and every kind of PATCH go through here."""
        if subresource not in (None, "status"):
            raise ApiError(404, "NotFound", f"subresource {subresource!r} is not served")
        old = self.get(rdef, ns, name)
        candidate = change(copy.deepcopy(old))
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata", {}), dict):
            raise ApiError(422, "Invalid", "the result is not an object")
        sent_rv = (candidate.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rdef.plural} "{name}": the '
                "object has been modified; please apply your changes to the "
                "latest version and try again",
            )
        isolated = "status" in rdef.subresources
        if subresource == "status":
            # Only status moves through /status; everything else stays as stored.
            new = {k: v for k, v in old.items() if k != "status"}
            new["metadata"] = dict(old["metadata"])  # the stored version stays untouched by the bump below
            if candidate.get("status") is not None:
                new["status"] = candidate["status"]
        else:
            new = candidate
            new_meta = new.setdefault("metadata", {})
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation", "name", "namespace"):
                if key in old["metadata"]:
                    new_meta[key] = old["metadata"][key]
                else:
                    new_meta.pop(key, None)
            _fold_string_data(rdef, new)
            if isolated:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old  # a no-op write: no new resourceVersion, no event (kopf would loop on one)

        def body(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k != "metadata" and not (isolated and k == "status")}

        if body(new) != body(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._bump(new)
        okey = (ns if rdef.namespaced else None, name)
        self.objects[rdef.key][okey] = new
        self._index(rdef, okey, old, new)
        self._emit(rdef, "MODIFIED", new, old)
        if rdef.key == CRD_KEY:
            self.register_crd_def(new)  # e.g. `kubectl apply` of a CRD with new printer columns
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(rdef, okey, new)
        return new

    def patch(
        self,
        rdef: ResourceDef,
        ns: str | None,
        name: str,
        patch: Any,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        if patch_type == "json":
            return self.update(rdef, ns, name, lambda o: json_patch(o, patch), subresource)
        if not isinstance(patch, Mapping):
            raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
        return self.update(rdef, ns, name, lambda o: merge_patch(o, patch), subresource)

    def replace(
        self,
        rdef: ResourceDef,
        ns: str | None,
        name: str,
        body: Mapping[str, Any],
        subresource: str | None = None,
    ) -> Obj:
        if (body.get("metadata") or {}).get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        return self.update(rdef, ns, name, lambda o: copy.deepcopy(dict(body)), subresource)

    def delete(
        self,
        rdef: ResourceDef,
        ns: str | None,
        name: str,
        options: Mapping[str, Any] | None = None,
    ) -> Obj:
        options = options or {}
        obj = self.get(rdef, ns, name)
        pre = options.get("preconditions") or {}
        for key in ("uid", "resourceVersion"):
            if pre.get(key) and pre[key] != obj["metadata"].get(key):
                raise ApiError(409, "Conflict", f"Precondition failed: {key} does not match")
        okey = (ns if rdef.namespaced else None, name)
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return obj  # already marked: deleting again changes nothing
            new = copy.deepcopy(obj)
            new["metadata"].update(deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
            self._bump(new)
            self.objects[rdef.key][okey] = new
            self._emit(rdef, "MODIFIED", new, obj)
            return new
        gone = copy.deepcopy(obj)
        self._remove(rdef, okey, gone, orphan=options.get("propagationPolicy") == "Orphan")
        return gone

    def _remove(self, rdef: ResourceDef, okey: OKey, obj: Obj, *, orphan: bool = False) -> None:
        old = self.objects[rdef.key].pop(okey)
        self._index(rdef, okey, old, None)
        gone = copy.deepcopy(obj) if obj is old else obj
        self._bump(gone)
        self._emit(rdef, "DELETED", gone, old)
        if rdef.key == CRD_KEY:
            names = (obj.get("spec") or {}).get("names") or {}
            dropped = self.defs.pop(((obj.get("spec") or {}).get("group", ""), names.get("plural", "")), None)
            if dropped is not None:
                for okey2, child in list(self.objects[dropped.key].items()):
                    self._remove(dropped, okey2, child)
        uid = obj["metadata"]["uid"]
        if not orphan and uid in self.dependents:
            self.defer(lambda: self.collect_garbage(uid))
        if rdef.key == ("", "namespaces"):
            self.defer(lambda: self.empty_namespace(okey[1]))

    def empty_namespace(self, namespace: str) -> None:
        """What the namespace controller does, minus the Terminating phase: delete everything inside."""
        for rdef in list(self.defs.values()):
            if rdef.namespaced:
                for ns, name in [k for k in self.objects[rdef.key] if k[0] == namespace]:
                    self.delete(rdef, ns, name)

    def collect_garbage(self, owner_uid: str) -> None:
        """Background cascade: delete dependents whose owners are all gone (their finalizers still hold)."""
        for rkey, okey in sorted(self.dependents.get(owner_uid, set())):
            rdef = self.defs.get(rkey)
            child = self.objects[rkey].get(okey) if rdef else None
            if rdef is None or child is None:
                continue
            refs = child["metadata"].get("ownerReferences") or []
            if any(r.get("uid") in self.by_uid for r in refs):
                keep = [r for r in refs if r.get("uid") in self.by_uid]
                self.update(
                    rdef,
                    okey[0],
                    okey[1],
                    lambda o, k=keep: merge_patch(  # type: ignore[misc]
                        o, {"metadata": {"ownerReferences": k}}
                    ),
                )
            else:
                self.delete(rdef, okey[0], okey[1])

    # --- watching -----------------------------------------------------------------------------------
    def events_since(self, rdef: ResourceDef, rv: int) -> Iterable[Event]:
        if rv < self.compacted[rdef.key]:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.compacted[rdef.key]})")
        return [e for e in self.events[rdef.key] if e.rv > rv]

    def subscribe(self, rdef: ResourceDef, watcher: Callable[[Event], None]) -> Callable[[], None]:
        self.watchers[rdef.key].add(watcher)
        return lambda: self.watchers[rdef.key].discard(watcher)
