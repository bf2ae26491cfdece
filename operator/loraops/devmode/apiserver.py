"""An in-process fake Kubernetes API for tests and dev mode: kmock 0.8 plus the shim this project owns.

kmock gives the request handler base (request log, DSL reactions, `objects` with history, the bundled
catalogue of builtin resources); the shim gives what kopf, the `kubernetes` client and kubectl need from a
real apiserver (see docs/fake-api.md). `FakeKubeApi` runs it on 127.0.0.1 in its own thread and loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import json
import logging
import pathlib
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import kmock
import yaml
from aiohttp import web

from loraops.devmode.kstore import CRD_KEY, Event, ResourceDef, Store
from loraops.devmode.kutil import ApiError, Matcher, Obj, cell, field_matcher, label_matcher

log = logging.getLogger(__name__)
T = TypeVar("T")
JSON = "application/json"
_TABLE_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace.",
}
_AGE = {
    "name": "Age",
    "type": "date",
    "jsonPath": ".metadata.creationTimestamp",
    "priority": 0,
    "description": "CreationTimestamp of the object.",
}


@dataclass
class Fault:
    """An injected answer: the next `count` matching requests get `status` (or wait `delay` first)."""

    method: str
    path: re.Pattern[str]
    status: int | None
    delay: float
    count: int | None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        live = self.count is None or self.hits < self.count
        return live and self.method in ("*", method.upper()) and bool(self.path.search(path))


@dataclass
class Route:
    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    sub: str | None = None


def parse_route(path: str) -> Route | None:
    """Split an API path; unlike kmock's parser it copes with `/api/v1/namespaces[/name[/status]]`."""
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        route, rest = Route("", segs[1]), segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        route, rest = Route(segs[1], segs[2]), segs[3:]
    else:
        return None
    if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        route.namespace, rest = rest[1], rest[2:]
    if rest:
        route.plural = rest[0]
        route.name = rest[1] if len(rest) > 1 else None
        route.sub = "/".join(rest[2:]) or None
    return route


@functools.cache
def _bundled_catalogue() -> kmock.ResourcesArray:
    catalogue = kmock.ResourcesArray()
    with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        catalogue.load_bundled()
    return catalogue


def builtin_defs() -> list[ResourceDef]:
    """Builtin resources from kmock's bundled catalogue (one version per resource; no metrics API)."""
    catalogue = _bundled_catalogue()
    defs: dict[tuple[str, str], ResourceDef] = {}
    for res in catalogue:
        info = catalogue[res]
        if res.group == "metrics.k8s.io" or not res.plural or (res.group or "", res.plural) in defs:
            continue
        defs[res.group or "", res.plural] = ResourceDef(
            group=res.group or "",
            plural=res.plural,
            kind=info.kind or res.plural.capitalize(),
            namespaced=bool(info.namespaced),
            versions=[res.version or "v1"],
            singular=info.singular or (info.kind or res.plural).lower(),
            short_names=sorted(info.shortnames),
            categories=sorted(info.categories),
            subresources=set(info.subresources) | ({"log"} if res.plural == "pods" else set()),
            verbs=sorted(info.verbs) or ResourceDef("", "", "", True, []).verbs,
        )
    return list(defs.values())


class KubeShim(kmock.KubernetesEmulator):
    """The HTTP face of the store. Requests bypass kmock's DSL unless a test added reactions to it."""

    def __init__(self, store: Store, *, request_log_limit: int = 5000, history_limit: int = 10) -> None:
        super().__init__()
        self.store = store
        self.faults: list[Fault] = []
        self.fault_lock = threading.Lock()
        self.pod_logs: dict[tuple[str, str], str] = {}
        self.request_log_limit, self.history_limit = request_log_limit, history_limit
        self.bookmark_interval = 30.0
        self.closing = False
        self.total_requests = 0
        self._builtin_reactions = len(self._payloads)
        self._watch_queues: set[asyncio.Queue[Event | None]] = set()
        store.on_write = self._mirror

    def _mirror(self, rdef: ResourceDef, obj: Obj, gone: bool) -> None:
        # kmock's `objects` keeps a short history per object; deleted objects leave it for good so that
        # memory stays bounded in long dev-mode runs.
        meta = obj["metadata"]
        key = (kmock.resource(rdef.group, rdef.versions[0], rdef.plural), meta.get("namespace"), meta["name"])
        if gone:
            if key in self.objects:
                del self.objects[key]
            if rdef.key == ("", "pods"):
                self.pod_logs.pop((meta.get("namespace") or "", meta["name"]), None)
        elif key not in self.objects:
            self.objects[key] = obj
        else:
            history = self.objects[key].history
            history.append(obj)
            if len(history) > self.history_limit:
                del history[: -self.history_limit]

    # --- entry point --------------------------------------------------------------------------------
    async def __call__(self, raw: web.BaseRequest) -> web.StreamResponse:
        body = await raw.read()
        route = parse_route(raw.path)
        request = self._record(raw, route, body)
        try:
            with self.fault_lock:
                fault = next((f for f in self.faults if f.matches(raw.method, raw.path)), None)
                if fault:
                    fault.hits += 1
            if fault and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault and fault.status:
                # Rejected before anything is applied: a fault never leaves a half-done write behind.
                raise ApiError(fault.status, _REASONS.get(fault.status, "InternalError"), "injected fault")
            if len(self._payloads) > self._builtin_reactions:
                for reaction in self._payloads[self._builtin_reactions :]:
                    if request in reaction._source and not reaction._disabled.is_set():
                        try:
                            return await reaction(request)
                        except kmock.ReactionMismatchError:
                            reaction._disabled.set()
                        except NotImplementedError:
                            pass
            return await self._dispatch(raw, route, request.data)
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)
        except Exception as exc:
            log.exception("fake API failed on %s %s", raw.method, raw.path_qs)
            return web.json_response(ApiError(500, "InternalError", repr(exc)).status(), status=500)

    def _record(self, raw: web.BaseRequest, route: Route | None, body: bytes) -> kmock.Request:
        ctype = raw.headers.get("Content-Type", "")
        data: Any = None
        if body and ("json" in ctype or not ctype):  # the python client sends POST bodies untyped
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        action = None
        if route and route.plural:
            watch = raw.method == "GET" and raw.query.get("watch") in ("true", "1")
            action = {
                ("GET", False): kmock.action.LIST,
                ("GET", True): kmock.action.FETCH,
                ("POST", False): kmock.action.CREATE,
                ("PUT", True): kmock.action.UPDATE,
                ("PATCH", True): kmock.action.UPDATE,
                ("DELETE", True): kmock.action.DELETE,
            }.get((raw.method, route.name is not None))
            action = kmock.action.WATCH if watch else action
        request = kmock.Request(
            id=self.total_requests,
            method=raw.method,
            url=raw.url,
            params=dict(raw.query),
            headers=dict(raw.headers),
            body=body,
            text=body.decode("utf-8", "replace") if data else "",
            data=data,
            action=action,
            namespace=route.namespace if route else None,
            resource=kmock.resource(route.group, route.version, route.plural) if route and route.plural else None,
            name=route.name if route else None,
            subresource=route.sub if route else None,
        )
        self.total_requests += 1
        self._requests.append(request)
        if len(self._requests) > 2 * self.request_log_limit:  # trimmed in batches: amortised O(1)
            del self._requests[: -self.request_log_limit]
        return request

    # --- routing ------------------------------------------------------------------------------------
    async def _dispatch(self, raw: web.BaseRequest, route: Route | None, data: Any) -> web.StreamResponse:
        method, params = raw.method, raw.query
        ctype = raw.headers.get("Content-Type", "")
        if "protobuf" in ctype or "cbor" in ctype or "apply-patch" in ctype:
            raise ApiError(415, "UnsupportedMediaType", f"the fake API speaks JSON only, not {ctype}")
        if "dryRun" in params:
            raise ApiError(400, "BadRequest", "dryRun is not emulated by the fake API")
        if route is None or route.plural is None:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {raw.path}")
            return web.json_response(self._discovery(raw, route))
        rdef = self.store.defs.get((route.group, route.plural))
        if rdef is None or route.version not in rdef.versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = route.namespace if rdef.namespaced else None
        table = "as=Table" in raw.headers.get("Accept", "")
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(raw, rdef, route, table)
        if route.name is None:
            if method == "GET":
                match = self._matcher(params, None)
                objs = [self._out(o, rdef, route.version) for o in self.store.list(rdef, ns, match)]
                if table:
                    return web.json_response(self._table(rdef, route.version, objs, params))
                return web.json_response(
                    {
                        "kind": f"{rdef.kind}List",
                        "apiVersion": rdef.api_version(route.version),
                        "metadata": {"resourceVersion": str(self.store.rv)},
                        "items": objs,
                    }
                )
            if method == "POST":
                if not isinstance(data, dict):
                    raise ApiError(400, "BadRequest", "the request body must be a JSON object")
                created = self.store.create(rdef, ns, data, route.version)
                return web.json_response(self._out(created, rdef, route.version), status=201)
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection is not emulated")
        if route.sub == "log" and rdef.key == ("", "pods") and method == "GET":
            self.store.get(rdef, ns, route.name)
            text = self.pod_logs.get((ns or "", route.name), "")
            if params.get("tailLines"):
                text = "".join(text.splitlines(keepends=True)[-int(params["tailLines"]) :])
            return web.Response(text=text, content_type="text/plain")
        if method == "GET" and route.sub in (None, "status"):
            obj = self._out(self.store.get(rdef, ns, route.name), rdef, route.version)
            return web.json_response(self._table(rdef, route.version, [obj], params) if table else obj)
        if method == "PUT":
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "the request body must be a JSON object")
            obj = self.store.replace(rdef, ns, route.name, data, route.sub)
        elif method == "PATCH":
            kind = "json" if "json-patch" in ctype else "merge"
            obj = self.store.patch(rdef, ns, route.name, data, kind, route.sub)
        elif method == "DELETE" and route.sub is None:
            obj = self.store.delete(rdef, ns, route.name, data if isinstance(data, dict) else dict(params))
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not emulated on {raw.path}")
        return web.json_response(self._out(obj, rdef, route.version))

    @staticmethod
    def _matcher(params: Mapping[str, str], name: str | None) -> Matcher:
        fields = ",".join(s for s in (params.get("fieldSelector"), f"metadata.name={name}" if name else "") if s)
        by_label, by_field = label_matcher(params.get("labelSelector")), field_matcher(fields)
        return lambda o: by_label(o) and by_field(o)

    @staticmethod
    def _out(obj: Obj, rdef: ResourceDef, version: str) -> Obj:
        api_version = rdef.api_version(version)
        return obj if obj.get("apiVersion") == api_version else {**obj, "apiVersion": api_version}

    def _table(self, rdef: ResourceDef, version: str, objs: list[Obj], params: Mapping[str, str]) -> Obj:
        columns = rdef.columns.get(version) or [_AGE]
        include = params.get("includeObject", "PartialObjectMetadata")
        rows = []
        for obj in objs:
            row: Obj = {"cells": [obj["metadata"]["name"], *(cell(obj, c) for c in columns)]}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            rows.append(row)
        defs = [_TABLE_NAME] + [
            {
                k: c.get(k, d)
                for k, d in (("name", ""), ("type", "string"), ("format", ""), ("description", ""), ("priority", 0))
            }
            for c in columns
        ]
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.store.rv)},
            "columnDefinitions": defs,
            "rows": rows,
        }

    # --- watch --------------------------------------------------------------------------------------
    async def _watch(self, raw: web.BaseRequest, rdef: ResourceDef, route: Route, table: bool) -> web.StreamResponse:
        params, ns = raw.query, route.namespace if rdef.namespaced else None
        selected = self._matcher(params, route.name)

        def match(o: Mapping[str, Any]) -> bool:
            return (ns is None or o["metadata"].get("namespace") == ns) and selected(o)

        since, initial = params.get("resourceVersion", ""), params.get("sendInitialEvents") == "true"
        pending: list[tuple[str, Obj]] = []
        error: ApiError | None = None
        # Snapshot and subscription happen with no await between them: nothing is missed or doubled.
        if initial or since in ("", "0"):
            pending = [("ADDED", o) for o in self.store.list(rdef, ns, match)]
        else:
            try:
                backlog = self.store.events_since(rdef, int(since))
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}") from exc
            except ApiError as exc:
                error, backlog = exc, []
            pending = [t for t in (_translate(e, match) for e in backlog) if t]
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        unsubscribe = self.store.subscribe(rdef, queue.put_nowait)
        self._watch_queues.add(queue)
        loop = asyncio.get_running_loop()
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        deadline = None if timeout is None else loop.time() + timeout
        # kubectl `get -w` refuses the apiserver-default octet-stream: plain JSON lines work for everyone.
        response = web.StreamResponse(headers={"Content-Type": JSON})
        try:
            await response.prepare(raw)

            async def send(kind: str, obj: Obj) -> None:
                if table and kind != "BOOKMARK":
                    obj = self._table(rdef, route.version, [obj], {"includeObject": "Object"})
                elif kind != "BOOKMARK":
                    obj = self._out(obj, rdef, route.version)
                await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

            def bookmark(initial_end: bool = False) -> Obj:
                meta: Obj = {"resourceVersion": str(self.store.rv)}
                if initial_end:
                    meta["annotations"] = {"k8s.io/initial-events-end": "true"}
                return {"kind": rdef.kind, "apiVersion": rdef.api_version(route.version), "metadata": meta}

            if error is not None:
                await response.write(json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n")
                return response
            for kind, obj in pending:
                await send(kind, obj)
            if initial:
                await send("BOOKMARK", bookmark(initial_end=True))
            last_sent = loop.time()
            while not self.closing:
                wait = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                if wait <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if raw.transport is None or raw.transport.is_closing():
                        break
                    if params.get("allowWatchBookmarks") == "true" and loop.time() - last_sent > self.bookmark_interval:
                        await send("BOOKMARK", bookmark())
                        last_sent = loop.time()
                    continue
                if event is None:
                    break
                if out := _translate(event, match):
                    await send(*out)
                    last_sent = loop.time()
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; nothing to tell anyone
        finally:
            unsubscribe()
            self._watch_queues.discard(queue)
        return response

    def close_watches(self) -> None:
        self.closing = True
        for queue in list(self._watch_queues):
            queue.put_nowait(None)

    # --- discovery ----------------------------------------------------------------------------------
    def _discovery(self, raw: web.BaseRequest, route: Route | None) -> Obj:
        path = raw.path.rstrip("/") or "/"
        defs = list(self.store.defs.values())
        groups: dict[str, list[str]] = {}
        for d in sorted(defs, key=lambda d: d.group):
            for v in d.versions:
                if v not in groups.setdefault(d.group, []):
                    groups[d.group].append(v)
        if path == "/version":
            return {
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.0-loraops-fake",
                "platform": "linux/amd64",
                "gitCommit": "0000000",
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24",
                "compiler": "gc",
            }
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": raw.host}],
            }
        if path == "/":
            paths = ["/api", "/api/v1", "/apis", "/version"]
            paths += [p for g, vs in groups.items() if g for p in [f"/apis/{g}", *(f"/apis/{g}/{v}" for v in vs)]]
            return {"paths": sorted(paths)}

        def group_doc(g: str) -> Obj:
            vs = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups[g]]
            return {"name": g, "versions": vs, "preferredVersion": vs[0]}

        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups if g]}
        if path.count("/") == 2 and path.startswith("/apis/") and path[6:] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(path[6:])}
        if route is None or route.group not in groups or route.version not in groups[route.group]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources = []
        for d in sorted(defs, key=lambda d: d.plural):
            if d.group != route.group or route.version not in d.versions:
                continue
            resources.append(
                {
                    "name": d.plural,
                    "singularName": d.singular,
                    "namespaced": d.namespaced,
                    "kind": d.kind,
                    "verbs": d.verbs,
                    "shortNames": d.short_names,
                    "categories": d.categories,
                }
            )
            resources += [
                {
                    "name": f"{d.plural}/{s}",
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "kind": d.kind,
                    "verbs": ["get", "patch", "update"],
                }
                for s in sorted(d.subresources)
            ]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{route.group}/{route.version}" if route.group else route.version,
            "resources": resources,
        }


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _translate(event: Event, match: Matcher) -> tuple[str, Obj] | None:
    """What a watch with selectors sees: objects entering the selection are ADDED, leaving it DELETED."""
    now_in = match(event.obj)
    was_in = event.old is not None and match(event.old)
    if event.type == "DELETED":
        return ("DELETED", event.obj) if was_in or now_in else None
    if event.type == "ADDED" or not was_in:
        return ("ADDED", event.obj) if now_in else None
    return ("MODIFIED" if now_in else "DELETED", event.obj)


def load_crd_documents(path: str | pathlib.Path) -> list[Obj]:
    """Every CustomResourceDefinition in a YAML file, or in each `*.yaml` of a directory."""
    path = pathlib.Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return [
        doc
        for f in files
        for doc in yaml.safe_load_all(f.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    ]


class FakeKubeApi:
    """The fake API on 127.0.0.1 in its own thread and event loop, with thread-safe accessors.

    Accessors name resources the way kubectl does: `pods`, `deployments.apps`, `la`, `LoraAdapter`.
    """

    def __init__(
        self,
        crds: Iterable[Mapping[str, Any]] = (),
        *,
        crd_dirs: Iterable[str | pathlib.Path] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        history_limit: int = 10,
        request_log_limit: int = 5000,
        event_log_limit: int = 1000,
    ) -> None:
        self.store = Store(event_log_limit=event_log_limit)
        for rdef in builtin_defs():
            self.store.register(rdef)
        self.shim = KubeShim(self.store, request_log_limit=request_log_limit, history_limit=history_limit)
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._url: str | None = None
        self.create("namespaces", {"metadata": {"name": "default"}, "status": {"phase": "Active"}})
        for crd in crds:
            self.register_crd(crd)
        for directory in crd_dirs:
            self.load_crds(directory)

    @property
    def kmock(self) -> KubeShim:
        """The kmock handler: `api.kmock.objects[...]` (with history) and the request-log DSL."""
        return self.shim

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake API is not started")
        return self._url

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> str:
        if self._thread is not None:
            return self.url
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-kube-api", daemon=True)
        self._thread.start()
        self._url = ready.result(timeout=30)
        return self._url

    def _run(self, ready: concurrent.futures.Future[str]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop, ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[str]) -> None:
        def deferred(fn: Callable[[], None]) -> None:
            def run() -> None:
                try:
                    fn()
                except ApiError as exc:  # e.g. a dependent already gone: GC is best effort, as in k8s
                    log.debug("background GC: %s", exc)

            loop.call_soon(run)

        self.store.defer = deferred
        self.shim.closing = False  # the server may be started again after a stop
        self._stop = asyncio.Event()
        # handler_cancellation: a watch whose client disconnected is cancelled instead of lingering.
        runner = web.ServerRunner(web.Server(self.shim, handler_cancellation=True), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop = loop
        ready.set_result(f"http://{self.host}:{self.port}")
        await self._stop.wait()
        self.shim.close_watches()
        await runner.cleanup()

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)
        self._thread = self._loop = None
        self.store.defer = lambda fn: fn()

    def __enter__(self) -> FakeKubeApi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], T]) -> T:
        # Store state belongs to the server loop; other threads hand their work over and wait. Results are
        # copies: a caller editing what it got must not edit what the server stores.
        if self._loop is None or threading.current_thread() is self._thread:
            return copy.deepcopy(fn())
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(copy.deepcopy(fn()))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(timeout=30)

    # --- resources ----------------------------------------------------------------------------------
    def register_crd(self, crd: Mapping[str, Any]) -> str:
        """Serve a CRD (and keep it as an object, as kopf's scanning expects); returns its plural."""

        def run() -> str:
            crd_def, name = self.store.defs[CRD_KEY], crd["metadata"]["name"]
            if (None, name) in self.store.objects[CRD_KEY]:
                body = copy.deepcopy(dict(crd))
                body["metadata"].pop("resourceVersion", None)
                self.store.replace(crd_def, None, name, body)
            else:
                self.store.create(crd_def, None, crd)
            return str(crd["spec"]["names"]["plural"])

        return self._call(run)

    def load_crds(self, path: str | pathlib.Path) -> list[str]:
        """Register every CRD found in a YAML file or in the `*.yaml` files of a directory such as `crds/`."""
        return [self.register_crd(doc) for doc in load_crd_documents(path)]

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        def run() -> Obj | None:
            try:
                return self.store.get(self.store.resolve(resource), namespace, name)
            except ApiError as exc:
                if exc.code == 404 and exc.reason == "NotFound" and "resource type" not in exc.message:
                    return None
                raise

        return self._call(run)

    def list(self, resource: str, namespace: str | None = None, label_selector: str | None = None) -> list[Obj]:
        return self._call(
            lambda: self.store.list(self.store.resolve(resource), namespace, label_matcher(label_selector))
        )

    def create(self, resource: str, obj: Mapping[str, Any], namespace: str | None = None) -> Obj:
        """Seed an object; unlike a POST, a seeded `status` is kept (tests set the observed world)."""
        return self._call(lambda: self.store.create(self.store.resolve(resource), namespace, obj, seed_status=True))

    def patch(
        self, resource: str, namespace: str | None, name: str, patch: Mapping[str, Any], subresource: str | None = None
    ) -> Obj:
        """Merge-patch an object (`subresource="status"` to write status, as a controller would)."""
        return self._call(
            lambda: self.store.patch(self.store.resolve(resource), namespace, name, patch, "merge", subresource)
        )

    def delete(self, resource: str, namespace: str | None, name: str) -> Obj:
        return self._call(lambda: self.store.delete(self.store.resolve(resource), namespace, name))

    def ensure_namespace(self, name: str) -> Obj:
        return self.get("namespaces", None, name) or self.create(
            "namespaces", {"metadata": {"name": name}, "status": {"phase": "Active"}}
        )

    def set_pod_log(self, namespace: str, pod: str, text: str) -> None:
        self._call(lambda: self.shim.pod_logs.__setitem__((namespace, pod), text))

    def append_pod_log(self, namespace: str, pod: str, text: str) -> None:
        self._call(
            lambda: self.shim.pod_logs.__setitem__(
                (namespace, pod), self.shim.pod_logs.get((namespace, pod), "") + text
            )
        )

    # --- faults and observation ---------------------------------------------------------------------
    def inject_fault(
        self, method: str, path_regex: str, status: int | None = 500, delay: float = 0.0, count: int | None = 1
    ) -> Fault:
        """Answer (or first delay) the next `count` requests whose path matches; `count=None`: all of them."""
        fault = Fault(method.upper(), re.compile(path_regex), status, delay, count)
        with self.shim.fault_lock:
            self.shim.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.shim.fault_lock:
            self.shim.faults.clear()

    def request_count(self, method: str | None = None, path_regex: str | None = None) -> int:
        """Requests in the (bounded) log matching a method and a regex searched in the path and query."""
        pattern = re.compile(path_regex) if path_regex else None
        return sum(
            1
            for r in list(self.shim._requests)
            if (method is None or r.method.value == method.upper())
            and (pattern is None or pattern.search(str(r.url.path_qs)))
        )

    def write_kubeconfig(self, path: str | pathlib.Path, namespace: str = "default") -> pathlib.Path:
        """A kubeconfig for kubectl and `kubernetes.config.new_client_from_config` (never ~/.kube)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        name = "loraops-fake"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": name,
                    "preferences": {},
                    "clusters": [{"name": name, "cluster": {"server": self.url}}],
                    "users": [{"name": name, "user": {"token": "fake-token"}}],
                    "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
                }
            )
        )
        return path


def serve(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    crd_dirs: Iterable[str | pathlib.Path] = (),
    kubeconfig: str | pathlib.Path | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the fake API in the foreground until `stop` is set or Ctrl-C (for `loraops dev`)."""
    with FakeKubeApi(crd_dirs=crd_dirs, host=host, port=port) as api:
        if kubeconfig is not None:
            api.write_kubeconfig(kubeconfig)
        print(f"fake Kubernetes API at {api.url}" + (f", kubeconfig {kubeconfig}" if kubeconfig else ""), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            (stop or threading.Event()).wait()
