"""Fake OpenAI-compatible upstreams on loopback (with fault injection) and helpers to run a router over them.

Tests are plain functions that call `run(coroutine)`: the router, the upstreams and the client all live in one
fresh event loop per test, talking real HTTP over loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from loraops.api.route import RouteTable
from loraops.router.server import Router, RouterConfig
from loraops.router.sources import StaticSource, TableSource

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0, *, loop: str = "uvloop") -> T:
    """Run a test's coroutine in a fresh loop: uvloop by default, as `loraops router` runs."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(bounded())
    return asyncio.run(bounded())


@dataclass
class Behaviour:
    status: int = 200
    delay_s: float = 0.0
    """Before the response headers (or the first stream byte)."""
    fail_pattern: tuple[int, int] | None = None
    """(k, n): the first k of every n requests answer 500, the rest 200 (deterministic failure rate k/n)."""
    chunks: int = 4
    chunk_delay_s: float = 0.0
    answer: str | None = None
    cut_after: int | None = None
    """Streams: drop the connection after this many events (a pod dying mid-answer)."""


@dataclass
class Seen:
    path: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeUpstream:
    """An OpenAI-compatible server that answers `answer from <model>` and misbehaves on demand per model."""

    models: set[str] | None = None
    """Served names it knows (others get vLLM's 404); None: every name."""
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stream_bytes: list[bytes] = field(default_factory=list)
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None

    def count(self, model: str) -> int:
        return sum(1 for s in self.seen if s.model == model)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        self.seen.append(Seen(request.path, model, body, dict(request.headers)))
        self.started += 1
        try:
            return await self._answer(request, body, model)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except ConnectionError:
            self.cancelled += 1
            raise
        finally:
            self.finished += 1

    async def _answer(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        if self.models is not None and model not in self.models:
            err = {
                "error": {
                    "message": f"The model `{model}` does not exist.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
            }
            return web.json_response(err, status=404)
        b = self.behaviours.get(model, Behaviour())
        n = self.counters[model] = self.counters.get(model, 0) + 1
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        status = b.status
        if b.fail_pattern is not None:
            k, every = b.fail_pattern
            status = 500 if (n - 1) % every < k else 200
        if status != 200:
            err = {"error": {"message": f"injected {status}", "type": "InternalServerError", "code": status}}
            return web.json_response(err, status=status)
        answer = b.answer if b.answer is not None else f"answer from {model}"
        if body.get("stream"):
            return await self._stream(request, body, model, answer, b)
        chat = request.path.endswith("chat/completions")
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": answer, "finish_reason": "stop"}
        )
        payload = {
            "id": "cmpl-1",
            "object": "chat.completion" if chat else "text_completion",
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 7, "total_tokens": 7 + 5, "completion_tokens": 5},
        }
        return web.json_response(payload)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, answer: str, b: Behaviour
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        sent = bytearray()
        # Contiguous slices: the events' contents joined give the answer back, as a real stream's do.
        size = -(-len(answer) // b.chunks)
        pieces = [answer[i * size : (i + 1) * size] for i in range(b.chunks)]
        for i, piece in enumerate(pieces):
            if b.cut_after is not None and i == b.cut_after:
                assert request.transport is not None
                request.transport.abort()
                return resp
            event = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                "n": i,
            }
            data = f"data: {json.dumps(event)}\n\n".encode()
            sent += data
            await resp.write(data)
            if b.chunk_delay_s:
                await asyncio.sleep(b.chunk_delay_s)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 7, "total_tokens": 7 + len(pieces), "completion_tokens": len(pieces)},
            }
            data = f"data: {json.dumps(usage)}\n\n".encode()
            sent += data
            await resp.write(data)
        sent += b"data: [DONE]\n\n"
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.stream_bytes.append(bytes(sent))
        return resp


@asynccontextmanager
async def upstream(**kwargs: Any) -> AsyncIterator[FakeUpstream]:
    up = FakeUpstream(**kwargs)
    await up.start()
    try:
        yield up
    finally:
        await up.stop()


def route(
    model: str,
    base_url: str,
    *,
    base: str = "base-model",
    entries: list[dict[str, Any]] | None = None,
    backends: list[tuple[str | None, str, int]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A routes-file route; `backends` is a shortcut for one default entry of (adapter, servedName, weight)."""
    if entries is None:
        entries = [
            {
                "backends": [
                    {"adapter": a, "servedName": s, "weight": w} if a else {"servedName": s, "weight": w}
                    for a, s, w in (backends or [(None, base, 100)])
                ]
            }
        ]
    return {"model": model, "baseUrl": base_url, "baseServedModel": base, "entries": entries, **extra}


@asynccontextmanager
async def router_for(
    table: dict[str, Any] | RouteTable | None = None,
    *,
    source: TableSource | None = None,
    **config: Any,
) -> AsyncIterator[Router]:
    if source is None:
        assert table is not None
        source = StaticSource(table if isinstance(table, RouteTable) else RouteTable.model_validate(table))
    router = Router(RouterConfig(host="127.0.0.1", port=0, **config), source)
    await router.start()
    try:
        await wait_for(lambda: router.table is not None)
        yield router
    finally:
        await router.stop()


def url(router: Router, path: str = "/v1/chat/completions") -> str:
    return f"http://127.0.0.1:{router.port}{path}"


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **extra}


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def post(
    session: aiohttp.ClientSession,
    router: Router,
    body: Any,
    *,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url(router, path), data=data, headers=headers or {}) as resp:
        raw = await resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return resp.status, dict(resp.headers), parsed


async def gather_limited(coros: list[Awaitable[T]], limit: int = 32) -> list[T]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[T]) -> T:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


def sample(router: Router, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    from prometheus_client import generate_latest

    text = generate_latest(router.metrics.registry).decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def is_openai_error(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), dict)
        and isinstance(body["error"].get("message"), str)
        and isinstance(body["error"].get("type"), str)
    )
