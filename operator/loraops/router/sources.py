"""Where the route table comes from: a small interface with one class per source.

A source runs as a task and calls `publish(table)` with every new complete table. A table it cannot read or
validate is logged and skipped: the router keeps serving the last good one (a half-written file or a bad
status must never empty the routes of a running router).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import yaml
from pydantic import ValidationError

from loraops.api.common import GROUP, VERSION
from loraops.api.route import RouteTable, RouteTraffic

log = logging.getLogger(__name__)

Publish = Callable[[RouteTable], None]
"""Receives each new table. Raises ValueError if the table is inconsistent (the source logs it and goes on)."""


def file_stamp(path: pathlib.Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten (inode, mtime, size); raises OSError."""
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class TableSource(Protocol):
    async def run(self, publish: Publish, on_error: Callable[[str], None]) -> None:
        """Publish the current table, then every change, until cancelled."""
        ...


class StaticSource:
    """A fixed table (tests, embedding)."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table

    async def run(self, publish: Publish, on_error: Callable[[str], None]) -> None:
        publish(self.table)
        await asyncio.Event().wait()


def load_routes_file(path: pathlib.Path) -> RouteTable:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return RouteTable.model_validate(data or {})


class FileSource:
    """A YAML routes file (`routes: [RouteTraffic]`), polled for changes.

    Polling (inode, mtime, size) rather than inotify: a ConfigMap volume swaps a symlink, which inotify on the
    file misses, and polling needs no extra dependency; it costs one stat() per interval."""

    def __init__(self, path: pathlib.Path, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            return file_stamp(self.path)
        except OSError:
            return None

    async def run(self, publish: Publish, on_error: Callable[[str], None]) -> None:
        seen: tuple[int, int, int] | None = None
        while True:
            stamp = self._stamp()
            if stamp is not None and stamp != seen:
                seen = stamp
                try:
                    table = load_routes_file(self.path)
                    publish(table)
                    log.info("routes file %s: %d routes", self.path, len(table.routes))
                except (OSError, ValueError, yaml.YAMLError) as err:
                    # ValidationError is a ValueError.
                    on_error(f"routes file {self.path}: {err}")
            elif stamp is None and seen is not None:
                on_error(f"routes file {self.path} is missing; keeping the last table")
                seen = None
            await asyncio.sleep(self.interval_s)


@dataclass(frozen=True)
class KubeConnection:
    """What is needed to talk to the API server, taken from a kubeconfig or the in-cluster service account."""

    server: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeConnection:
        # The kubernetes client only resolves the config (auth plugins, certificates, in-cluster files); the
        # watch itself runs on aiohttp in the router's event loop.
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        except config.ConfigException:
            if kubeconfig:
                raise
            config.load_incluster_config(client_configuration=cfg)
        headers: dict[str, str] = {}
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token:
            prefix = cfg.api_key_prefix.get("authorization", "")
            headers["Authorization"] = token if token.startswith("Bearer ") or not prefix else f"{prefix} {token}"
        context_ssl: ssl.SSLContext | bool
        if not cfg.host.startswith("https") or not cfg.verify_ssl:
            context_ssl = False
        else:
            context_ssl = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.cert_file and cfg.key_file:
                context_ssl.load_cert_chain(cfg.cert_file, cfg.key_file)
        return cls(server=cfg.host.rstrip("/"), headers=headers, ssl=context_ssl)


def table_from_routes(objects: Iterable[dict[str, Any]]) -> tuple[RouteTable, list[str]]:
    """The table served for these AdapterRoute objects, and a problem per object left out.

    Only `status.traffic` counts (what the controller decided), never `spec`. Two routes serving the same
    `model` name: the one created first keeps it (ties by namespace/name), so a newcomer cannot take over
    an existing model name."""
    problems: list[str] = []
    by_model: dict[str, tuple[tuple[str, str, str], RouteTraffic]] = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        ident = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        traffic = (obj.get("status") or {}).get("traffic")
        if not traffic:
            continue
        try:
            route = RouteTraffic.model_validate(traffic)
        except ValidationError as err:
            problems.append(f"{ident}: status.traffic invalid: {err.errors()[0].get('msg')}")
            continue
        order = (str(meta.get("creationTimestamp", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))
        current = by_model.get(route.model)
        if current is not None:
            winner = min(current[0], order)
            loser = order if winner == current[0] else current[0]
            problems.append(
                f"{loser[1]}/{loser[2]}: model {route.model!r} is already served by {winner[1]}/{winner[2]}"
            )
            if winner == current[0]:
                continue
        by_model[route.model] = (order, route)
    return RouteTable(routes=[route for _, route in sorted(by_model.values(), key=lambda x: x[0])]), problems


class KubeSource:
    """AdapterRoute `status.traffic` in some namespaces (or all), by list + watch.

    Plain aiohttp against the API: list (for the resourceVersion), then watch from it; a 410 Gone or a
    broken stream starts over with a fresh list, so a missed event is healed by the next list."""

    PLURAL = "adapterroutes"

    def __init__(
        self,
        connection: KubeConnection,
        namespaces: list[str] | None = None,
        *,
        backoff_s: float = 1.0,
        watch_timeout_s: int = 300,
    ) -> None:
        self.connection = connection
        self.namespaces = namespaces or []
        self.backoff_s = backoff_s
        self.watch_timeout_s = watch_timeout_s
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}

    def _url(self, namespace: str | None) -> str:
        base = f"{self.connection.server}/apis/{GROUP}/{VERSION}"
        return f"{base}/namespaces/{namespace}/{self.PLURAL}" if namespace else f"{base}/{self.PLURAL}"

    def _publish(self, publish: Publish, on_error: Callable[[str], None]) -> None:
        objects = [obj for per_ns in self._objects.values() for obj in per_ns.values()]
        table, problems = table_from_routes(objects)
        for problem in problems:
            on_error(problem)
        try:
            publish(table)
        except ValueError as err:
            on_error(f"AdapterRoute table rejected: {err}")

    async def run(self, publish: Publish, on_error: Callable[[str], None]) -> None:
        connector = aiohttp.TCPConnector(ssl=self.connection.ssl)
        async with aiohttp.ClientSession(
            connector=connector, headers=self.connection.headers, timeout=aiohttp.ClientTimeout(total=None)
        ) as session:
            scopes: list[str | None] = list(self.namespaces) if self.namespaces else [None]
            await asyncio.gather(*(self._watch(session, ns, publish, on_error) for ns in scopes))

    async def _watch(
        self, session: aiohttp.ClientSession, namespace: str | None, publish: Publish, on_error: Callable[[str], None]
    ) -> None:
        scope = namespace or ""
        url = self._url(namespace)
        while True:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"list {url}: HTTP {resp.status}: {(await resp.text())[:200]}")
                    listing = await resp.json()
                self._objects[scope] = {
                    (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in listing.get("items") or []
                }
                self._publish(publish, on_error)
                version = (listing.get("metadata") or {}).get("resourceVersion", "")
                params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(self.watch_timeout_s)}
                if version:
                    params["resourceVersion"] = version
                async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"watch {url}: HTTP {resp.status}")
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            # 410 Gone (resourceVersion too old) and the like: list again.
                            break
                        if kind == "BOOKMARK":
                            continue
                        meta = obj.get("metadata") or {}
                        key = (meta.get("namespace", ""), meta.get("name", ""))
                        objects = self._objects.setdefault(scope, {})
                        if kind == "DELETED":
                            objects.pop(key, None)
                        else:
                            objects[key] = obj
                        self._publish(publish, on_error)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, RuntimeError, ValueError, KeyError, TimeoutError) as err:
                on_error(f"AdapterRoute watch {url}: {err}")
                await asyncio.sleep(self.backoff_s)
