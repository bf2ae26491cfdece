"""The agent's HTTP API (aiohttp): /v1/adapters, /healthz, /readyz, /metrics."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from loraops.agent.errors import AgentFailure
from loraops.agent.models import AdapterList, ErrorBody, PutAdapter, PutResult
from loraops.agent.service import Agent

log = logging.getLogger("loraops.agent")
AGENT_KEY = web.AppKey("agent", Agent)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, body: ErrorBody) -> web.Response:
    return web.json_response(body.wire(), status=status)


def failure_response(agent: Agent, name: str | None, error: AgentFailure) -> web.Response:
    record = agent.records.get(name) if name else None
    return error_response(error.status, ErrorBody(reason=error.reason, message=error.message, adapter=record))


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[AGENT_KEY].config.token
    if token and request.path.startswith("/v1/"):
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return error_response(401, ErrorBody(reason="Unauthorized", message="a valid bearer token is required"))
    return await handler(request)


async def list_adapters(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return web.json_response(AdapterList(adapters=list(agent.snapshot()), vllm_up=agent.vllm_up).wire())


async def get_adapter(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = request.match_info["name"]
    record = agent.records.get(name)
    if record is None:
        return error_response(404, ErrorBody(reason="NotFound", message=f"adapter {name!r} is not held here"))
    return web.json_response(record.wire())


async def put_adapter(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = request.match_info["name"]
    try:
        body = PutAdapter.model_validate(await request.json())
    except (ValueError, ValidationError) as error:
        # Field names only: a body that wrongly carries a secret must not echo it back or into logs.
        fields = (
            sorted({".".join(map(str, e["loc"])) for e in error.errors()}) if isinstance(error, ValidationError) else []
        )
        message = f"invalid body (fields: {', '.join(fields)})" if fields else "body is not JSON"
        return error_response(400, ErrorBody(reason="InvalidRequest", message=message))
    try:
        record, changed = await agent.put(name, body)
    except AgentFailure as error:
        return failure_response(agent, name, error)
    return web.json_response(PutResult(adapter=record, changed=changed).wire())


async def delete_adapter(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    name = request.match_info["name"]
    try:
        record = await agent.delete(name)
    except AgentFailure as error:
        return failure_response(agent, name, error)
    if record is None:
        return error_response(404, ErrorBody(reason="NotFound", message=f"adapter {name!r} is not held here"))
    return web.json_response(record.wire())


async def healthz(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return web.json_response({"ok": agent.alive}, status=200 if agent.alive else 500)


async def readyz(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    body = {"ready": agent.ready, "vllmUp": agent.vllm_up, "reloading": agent.reloading}
    return web.json_response(body, status=200 if agent.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    response = web.Response(body=generate_latest(agent.metrics.registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def build_app(agent: Agent, *, manage_agent: bool = True, watch: bool = True) -> web.Application:
    """The aiohttp application; with `manage_agent` it starts and stops the agent (and its watch loop)."""
    app = web.Application(middlewares=[auth])
    app[AGENT_KEY] = agent
    app.router.add_get("/v1/adapters", list_adapters)
    app.router.add_get("/v1/adapters/{name}", get_adapter)
    app.router.add_put("/v1/adapters/{name}", put_adapter)
    app.router.add_delete("/v1/adapters/{name}", delete_adapter)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if manage_agent:

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            await agent.start(watch=watch)
            yield
            await agent.stop()

        app.cleanup_ctx.append(lifecycle)
    return app
