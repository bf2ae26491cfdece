"""The router's HTTP server: aiohttp's low-level server with one dispatch dict, no middleware chain.

One request: read and parse the body → tenant → route → entry → sticky weighted backend → tenant check →
circuit breaker → (mirror offer) → upstream attempt → on failure before the first byte, one attempt on the
base model. Everything per route is precompiled in `table.py`; upstream connections are long-lived keep-alive
pools (`upstream.py`, `http1.py`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loraops.api.route import RouteTable

from .breaker import CircuitBreaker, State
from .errors import error_body
from .http1 import ConnectError, Response
from .metrics import NO_TENANT, OTHER_TENANT, RouterMetrics
from .mirror import Mirror, MirrorJob, answer_text
from .sources import TableSource
from .table import BASE_LABEL, CompiledTable, Route, Target, compile_table, key_hash
from .tenants import ApiKeys, TenantError, TenantResolver

log = logging.getLogger(__name__)

JSON = "application/json"
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_STREAM_TAIL = 4096


@dataclass
class RouterConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    tenant_header: str = "X-Tenant-Id"
    user_header: str = "X-User-Id"
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    base_timeout_s: float = 600.0
    """Time to the first byte for the base model (the adapter's comes from the route's fallback policy)."""
    connect_timeout_s: float = 5.0
    stream_usage: bool = True
    """Ask upstream for a usage chunk in streams (and strip it when the client did not ask for one)."""
    mirror_queue: int = 256
    mirror_concurrency: int = 8
    mirror_timeout_s: float = 60.0
    api_keys_refresh_s: float = 5.0
    known_tenants: frozenset[str] = field(default_factory=frozenset)
    """Extra tenants to keep as metric labels besides those the table and the key file name."""


class _Failure(Exception):
    """An attempt that failed before any byte reached the client: it may still fall back."""

    def __init__(self, reason: str, status: int | None = None, body: bytes = b"", content_type: str = JSON) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.body = body
        self.content_type = content_type


_FAILURE_STATUS = {"timeout": 504, "connect_error": 502, "upstream_error": 502, "server_error": 502}
_FAILURE_MESSAGE = {
    "timeout": "the upstream did not answer in time",
    "connect_error": "the upstream refused or dropped the connection",
    "upstream_error": "the upstream connection broke before the answer started",
    "server_error": "the upstream failed",
    "model_not_found": "the adapter is not loaded upstream",
    "circuit_open": "the adapter is failing; its circuit breaker is open",
}


def _is_model_not_found(status: int, body: bytes) -> bool:
    if status == 404:
        return True
    if status != 400:
        return False
    lowered = body.lower()
    return b"model" in lowered and (b"does not exist" in lowered or b"not found" in lowered)


def _usage_from(tail: bytes) -> tuple[int, int] | None:
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    window = tail[at : at + 512]
    prompt = _PROMPT_TOKENS.search(window)
    completion = _COMPLETION_TOKENS.search(window)
    if prompt is None and completion is None:
        return None
    return (int(prompt.group(1)) if prompt else 0, int(completion.group(1)) if completion else 0)


def _split_events(buffer: bytes) -> tuple[bytes, bytes]:
    """(complete SSE events, the incomplete rest)."""
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
    if end == 0:
        return b"", buffer
    return buffer[:end], buffer[end:]


def _strip_usage_events(events: bytes) -> tuple[bytes, tuple[int, int] | None]:
    """Drop the usage-only event the router asked for on the client's behalf; keep every other byte."""
    kept: list[bytes] = []
    usage = None
    for event in re.split(rb"(?<=\n\n)|(?<=\r\n\r\n)", events):
        if not event:
            continue
        if b'"usage"' in event and event.startswith(b"data:"):
            try:
                data = json.loads(event[5:])
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("choices") == [] and isinstance(data.get("usage"), dict):
                u = data["usage"]
                usage = (int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
                continue
        kept.append(event)
    return b"".join(kept), usage


class _TextCollector:
    """The answer text of an SSE stream (chat `delta.content` or completion `text`), assembled event by event."""

    __slots__ = ("_parts", "_pending")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        events, self._pending = _split_events(self._pending + chunk)
        for line in events.splitlines():
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            try:
                data = json.loads(line[5:])
                choice = data["choices"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(piece, str):
                self._parts.append(piece)

    def text(self) -> str:
        return "".join(self._parts)


class _JsonErrorHandler(RequestHandler):
    """Protocol-level errors (header lines too long, malformed requests) as OpenAI-style JSON, not text."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if isinstance(exc, LineTooLong):
            status, text = 431, "request header too large"
        elif status == 500:
            log.error("unhandled error in request handler", exc_info=exc)
            text = "internal router error"
        else:
            text = "malformed HTTP request"
        resp = web.Response(status=status, body=error_body(status, text), content_type=JSON)
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class Router:
    """Owns the route table, the upstream pools, the breakers, the mirror workers and the HTTP server."""

    def __init__(
        self,
        config: RouterConfig,
        source: TableSource | None = None,
        *,
        api_keys: ApiKeys | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        from .upstream import Upstreams

        self.config = config
        self.source = source
        self.metrics = metrics or RouterMetrics()
        self.api_keys = api_keys
        self.tenants = TenantResolver(config.tenant_header, api_keys)
        self.upstreams = Upstreams(connect_timeout_s=config.connect_timeout_s)
        self.mirror = Mirror(
            self.upstreams,
            self.metrics,
            queue_size=config.mirror_queue,
            concurrency=config.mirror_concurrency,
            timeout_s=config.mirror_timeout_s,
        )
        self.table: CompiledTable | None = None
        self._raw_table: RouteTable | None = None
        self._label_tenants: frozenset[str] = config.known_tenants
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.ServerRunner | None = None
        self.port: int | None = None
        self._dispatch: dict[tuple[str, str], Callable[[BaseRequest], Awaitable[web.StreamResponse]]] = {
            ("POST", "/v1/chat/completions"): functools.partial(self._counted, "/v1/chat/completions"),
            ("POST", "/v1/completions"): functools.partial(self._counted, "/v1/completions"),
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metrics"): self._metrics,
        }
        self._paths = {path for _, path in self._dispatch}

    # ---- route table ----

    def publish(self, table: RouteTable) -> None:
        """Swap in a new table. In-flight requests keep the route objects they started with."""
        if self._raw_table is not None and table == self._raw_table:
            return
        compiled = compile_table(table)  # ValueError leaves the current table in place
        for (model, _adapter), breaker in self.breakers.items():
            if (route := compiled.routes.get(model)) is not None:
                breaker.reconfigure(route.breaker)
        self.table = compiled
        self._raw_table = table
        self._refresh_label_tenants()
        self.metrics.routes.set(len(compiled.routes))
        self.metrics.reloads.labels("ok").inc()

    def _table_error(self, message: str) -> None:
        log.error("%s", message)
        self.metrics.reloads.labels("error").inc()

    def _refresh_label_tenants(self) -> None:
        tenants = set(self.config.known_tenants)
        if self.table is not None:
            tenants.update(self.table.tenants)
        if self.api_keys is not None:
            tenants.update(self.api_keys.tenants)
        self._label_tenants = frozenset(tenants)

    def _tenant_label(self, tenant: str | None) -> str:
        if tenant is None:
            return NO_TENANT
        return tenant if tenant in self._label_tenants else OTHER_TENANT

    def breaker(self, route: Route, target: Target) -> CircuitBreaker:
        key = (route.model, target.adapter)
        breaker = self.breakers.get(key)
        if breaker is None:
            m = self.metrics

            def changed(state: State, model: str = route.model, adapter: str = target.adapter) -> None:
                m.circuit_state.labels(model, adapter).set(int(state))
                m.circuit_transitions.labels(model, adapter, state.name.lower().replace("_", "-")).inc()
                log.warning("circuit breaker %s/%s is now %s", model, adapter, state.name.lower())

            breaker = self.breakers[key] = CircuitBreaker(route.breaker, on_change=changed)
            m.circuit_state.labels(route.model, target.adapter).set(0)
        return breaker

    # ---- lifecycle ----

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        if self.source is not None:
            self._tasks.append(asyncio.create_task(self._run_source(self.source), name="route-source"))
        if self.api_keys is not None:
            self._tasks.append(asyncio.create_task(self._refresh_keys(self.api_keys), name="api-keys"))
        self.mirror.start()
        max_size = self.config.max_body_bytes

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            return BaseRequest(
                message, payload, protocol, writer, task, asyncio.get_running_loop(), client_max_size=max_size
            )

        server = _Server(
            self._handle,
            request_factory=request_factory,
            # A client that goes away cancels its handler, which closes the upstream request with it.
            handler_cancellation=True,
            access_log=None,
            max_line_size=self.config.max_header_bytes,
            max_field_size=self.config.max_header_bytes,
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=1024)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("router listening on %s:%s", self.config.host, self.port)
        return self.port

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.mirror.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.upstreams.close()

    async def _run_source(self, source: TableSource) -> None:
        def publish(table: RouteTable) -> None:
            try:
                self.publish(table)
            except ValueError as err:
                self._table_error(f"route table rejected: {err}")

        await source.run(publish, self._table_error)

    async def _refresh_keys(self, keys: ApiKeys) -> None:
        while True:
            await asyncio.sleep(self.config.api_keys_refresh_s)
            keys.refresh()
            self._refresh_label_tenants()

    # ---- HTTP ----

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        handler = self._dispatch.get((request.method, request.path))
        if handler is not None:
            return await handler(request)
        if request.path in self._paths:
            return _error(405, f"method {request.method} not allowed on {request.path}")
        return _error(404, f"no such endpoint: {request.method} {request.path[:200]}")

    async def _healthz(self, request: BaseRequest) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    async def _readyz(self, request: BaseRequest) -> web.StreamResponse:
        if self.table is None:
            return web.Response(status=503, body=b'{"status":"no route table yet"}', content_type=JSON)
        return web.Response(body=b'{"status":"ready"}', content_type=JSON)

    async def _metrics(self, request: BaseRequest) -> web.StreamResponse:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _models(self, request: BaseRequest) -> web.StreamResponse:
        try:
            tenant = self.tenants.resolve(request.headers)
        except TenantError as err:
            return _error(err.status, err.message, param=err.param)
        table = self.table
        data = []
        if table is not None:
            for route in table.routes.values():
                entry = route.entry_for(tenant)
                if entry is not None:
                    data.append({"id": route.model, "object": "model", "created": 0, "owned_by": "loraops"})
        return web.Response(body=json.dumps({"object": "list", "data": data}).encode(), content_type=JSON)

    async def _counted(self, path: str, request: BaseRequest) -> web.StreamResponse:
        """A proxied request, counted in flight while it lasts."""
        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            return await self._proxy(request, path)
        finally:
            in_flight.dec()

    async def _proxy(self, request: BaseRequest, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        m = self.metrics
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            return _error(413, f"request body over {self.config.max_body_bytes} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over {self.config.max_body_bytes} bytes")
        try:
            tenant = self.tenants.resolve(request.headers)
        except TenantError as err:
            return _error(err.status, err.message, param=err.param)
        try:
            payload = json.loads(raw)
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "request body must be a JSON object")
        model = payload.get("model")
        if model is None:
            return _error(404, "missing `model`", param="model", code="model_not_found")
        if not isinstance(model, str):
            return _error(400, "`model` must be a string", param="model")
        table = self.table
        if table is None:
            return _error(503, "the router has no route table yet")
        route = table.routes.get(model)
        entry = route.entry_for(tenant) if route is not None else None
        if route is None or entry is None:
            # Same answer whether the route is missing or hidden from this tenant: no probing other tenants'.
            return _error(404, f"The model `{model[:200]}` does not exist.", param="model", code="model_not_found")
        user = request.headers.get(self.config.user_header) or payload.get("user")
        if isinstance(user, str) and user:
            user_hash = key_hash(user)
        elif tenant is not None:
            user_hash = key_hash(tenant)
        else:
            # No key to stick to: a fresh draw per request still honours the weights.
            user_hash = random.getrandbits(64)
        selected = entry.select(user_hash)
        target = selected
        reason: str | None = None
        if not route.allows(tenant, selected):
            if route.fallback_to_base and not selected.is_base and route.allows(tenant, route.base):
                target, reason = route.base, "tenant_not_allowed"
            else:
                return _error(403, f"tenant may not use `{model[:200]}`", param="model", code="tenant_not_allowed")
        stream = payload.get("stream") is True
        tenant_label = self._tenant_label(tenant)

        primary: asyncio.Future[str | None] | None = None
        mirror = entry.mirror
        if mirror is not None and random.random() < mirror.fraction and route.allows(tenant, mirror.target):
            primary = asyncio.get_running_loop().create_future()
            self.mirror.offer(MirrorJob(route.model, mirror.target, path, payload, primary))

        breaker: CircuitBreaker | None = None
        if reason is None and not target.is_base:
            breaker = self.breaker(route, target)
            if not breaker.allow():
                breaker = None
                if not route.fallback_to_base:
                    _resolve(primary, None)
                    m.child(m.requests, route.model, selected.adapter, tenant_label, "503", "circuit_open").inc()
                    return _error(
                        503,
                        _FAILURE_MESSAGE["circuit_open"],
                        code="circuit_open",
                        headers={"x-loraops-adapter": selected.adapter},
                    )
                target, reason = route.base, "circuit_open"

        if reason is not None:
            m.child(m.fallbacks, route.model, selected.adapter, reason).inc()
        request_id = request.headers.get("X-Request-Id")
        response: web.StreamResponse | None = None
        try:
            try:
                response, healthy = await self._attempt(
                    request, route, target, payload, path, stream, started, reason, primary, request_id
                )
                if breaker is not None:
                    breaker.record(healthy)
            except _Failure as failure:
                if breaker is not None:
                    breaker.record(False)
                    breaker = None
                if not route.fallback_to_base or target.is_base:
                    response = _failure_response(failure, target.adapter, reason)
                else:
                    reason = failure.reason
                    m.child(m.fallbacks, route.model, selected.adapter, reason).inc()
                    try:
                        response, _ = await self._attempt(
                            request, route, route.base, payload, path, stream, started, reason, primary, request_id
                        )
                    except _Failure as base_failure:
                        response = _failure_response(base_failure, BASE_LABEL, reason)
        except (asyncio.CancelledError, ConnectionError):
            # The client went away: no response to count, but the breaker's probe slot must be given back.
            if breaker is not None:
                breaker.abandon()
            _resolve(primary, None)
            raise
        _resolve(primary, None)
        m.child(m.requests, route.model, selected.adapter, tenant_label, str(response.status), reason or "none").inc()
        return response

    async def _attempt(
        self,
        request: BaseRequest,
        route: Route,
        target: Target,
        payload: dict[str, Any],
        path: str,
        stream: bool,
        started: float,
        reason: str | None,
        primary: asyncio.Future[str | None] | None,
        request_id: str | None,
    ) -> tuple[web.StreamResponse, bool]:
        m = self.metrics
        payload["model"] = target.served_name
        strip_usage = False
        if stream and self.config.stream_usage:
            options = payload.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                strip_usage = True
        data = json.dumps(payload).encode()
        if strip_usage:
            # Restore the client's request: a fallback attempt re-serialises it.
            if options is None:
                del payload["stream_options"]
            else:
                payload["stream_options"] = options
        url = self.upstreams.pick(target)
        pool = self.upstreams.pool(url)
        timeout = self.config.base_timeout_s if target.is_base else route.timeout_s
        upstream = self.upstreams
        upstream.acquire(url)
        try:
            resp: Response | None = None
            try:
                async with asyncio.timeout(timeout):
                    resp = await pool.post(path, data, None if request_id is None else {"X-Request-Id": request_id})
                    if stream and resp.status == 200:
                        first = await resp.read_chunk()
                        if not first:
                            raise _Failure("upstream_error")
                    else:
                        body = await resp.read()
            except BaseException as err:
                if resp is not None:
                    resp.close()
                if isinstance(err, TimeoutError):
                    self._outcome(route, target, "timeout")
                    raise _Failure("timeout") from None
                if isinstance(err, ConnectError):
                    self._outcome(route, target, "connect_error")
                    raise _Failure("connect_error") from None
                if isinstance(err, OSError):
                    self._outcome(route, target, "upstream_error")
                    raise _Failure("upstream_error") from None
                if isinstance(err, _Failure):
                    self._outcome(route, target, err.reason)
                raise
            status = resp.status
            content_type = resp.content_type or JSON
            if not (stream and status == 200):
                if status >= 500:
                    self._outcome(route, target, "server_error")
                    raise _Failure("server_error", status, body, content_type)
                if not target.is_base and _is_model_not_found(status, body):
                    self._outcome(route, target, "model_not_found")
                    raise _Failure("model_not_found", status, body, content_type)
                self._outcome(route, target, "ok" if status < 400 else "client_error")
                headers_out = {"Content-Type": content_type, "x-loraops-adapter": target.adapter}
                if reason is not None:
                    headers_out["x-loraops-fallback"] = reason
                if status == 200:
                    usage = _usage_from(body[-_STREAM_TAIL:] if len(body) > _STREAM_TAIL else body)
                    if usage is not None:
                        self._count_tokens(route, target, usage)
                    if primary is not None and not primary.done():
                        try:
                            parsed = json.loads(body)
                        except ValueError:
                            parsed = None
                        primary.set_result(answer_text(parsed) if isinstance(parsed, dict) else None)
                elapsed = time.perf_counter() - started
                m.child(m.ttft, route.model, target.adapter).observe(elapsed)
                m.child(m.duration, route.model, target.adapter).observe(elapsed)
                return web.Response(body=body, status=status, headers=headers_out), True
            return await self._relay_stream(request, resp, first, route, target, started, reason, strip_usage, primary)
        finally:
            upstream.release(url)

    async def _relay_stream(
        self,
        request: BaseRequest,
        resp: Response,
        first: bytes,
        route: Route,
        target: Target,
        started: float,
        reason: str | None,
        strip_usage: bool,
        primary: asyncio.Future[str | None] | None,
    ) -> tuple[web.StreamResponse, bool]:
        m = self.metrics
        # Only a mirrored stream pays for parsing its events: the shadow's answer is compared with its text.
        collector = _TextCollector() if primary is not None and not primary.done() else None
        headers_out = {
            "Content-Type": resp.content_type or "text/event-stream",
            "Cache-Control": "no-cache",
            "x-loraops-adapter": target.adapter,
        }
        if reason is not None:
            headers_out["x-loraops-fallback"] = reason
        out = web.StreamResponse(status=200, headers=headers_out)
        usage: tuple[int, int] | None = None
        tail = b""
        pending = b""
        outcome = "ok"
        try:
            await out.prepare(request)
            chunk = first
            first_sent = False
            while chunk:
                if collector is not None:
                    collector.feed(chunk)
                if strip_usage:
                    events, pending = _split_events(pending + chunk)
                    if events and b'"usage"' in events:
                        events, found = _strip_usage_events(events)
                        usage = found or usage
                    chunk = events
                else:
                    tail = (tail + chunk)[-_STREAM_TAIL:]
                if chunk:
                    await out.write(chunk)
                    if not first_sent:
                        first_sent = True
                        m.child(m.ttft, route.model, target.adapter).observe(time.perf_counter() - started)
                chunk = await resp.read_chunk()
            if pending:
                await out.write(pending)
            await out.write_eof()
        except OSError as err:
            # Mid-stream: the client already has bytes, so no fallback is possible; end its stream.
            if isinstance(err, ConnectionResetError) and request.transport is None:
                raise
            outcome = "stream_error"
            log.warning("stream from %s broke: %s", target.adapter, err)
            if request.transport is not None:
                request.transport.close()
        finally:
            resp.close()
        self._outcome(route, target, outcome)
        if collector is not None and outcome == "ok":
            _resolve(primary, collector.text())
        if not strip_usage:
            usage = _usage_from(tail)
        if usage is not None:
            self._count_tokens(route, target, usage)
        m.child(m.duration, route.model, target.adapter).observe(time.perf_counter() - started)
        # A stream that broke after its first byte could not fall back, but it still counts against the breaker.
        return out, outcome == "ok"

    def _outcome(self, route: Route, target: Target, outcome: str) -> None:
        m = self.metrics
        m.child(m.upstream, route.model, target.adapter, outcome).inc()

    def _count_tokens(self, route: Route, target: Target, usage: tuple[int, int]) -> None:
        m = self.metrics
        if usage[0]:
            m.child(m.tokens, route.model, target.adapter, "prompt").inc(usage[0])
        if usage[1]:
            m.child(m.tokens, route.model, target.adapter, "completion").inc(usage[1])


def _resolve(future: asyncio.Future[str | None] | None, value: str | None) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status, body=error_body(status, message, param=param, code=code), content_type=JSON, headers=headers
    )


def _failure_response(failure: _Failure, adapter: str, reason: str | None) -> web.Response:
    headers = {"x-loraops-adapter": adapter}
    if reason is not None:
        headers["x-loraops-fallback"] = reason
    if failure.status is not None:
        # The upstream answered: relay its status and body (vLLM's errors are already OpenAI-shaped).
        headers["Content-Type"] = failure.content_type
        return web.Response(status=failure.status, body=failure.body, headers=headers)
    status = _FAILURE_STATUS.get(failure.reason, 502)
    return _error(status, _FAILURE_MESSAGE.get(failure.reason, "upstream failed"), code=failure.reason, headers=headers)
