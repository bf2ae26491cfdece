"""Bad input: every case gets an OpenAI-style error with the right status, and the router keeps serving."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.router.fakes import chat, is_openai_error, post, route, router_for, run, upstream, url

pytestmark = pytest.mark.router


def table(base_url: str) -> dict[str, object]:
    return {"routes": [route("bot", base_url)]}


async def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    """Speak HTTP by hand, for requests a well-behaved client library refuses to send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_bad_requests_get_openai_errors() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(table(up.url), max_body_bytes=10_000) as router:
            async with aiohttp.ClientSession() as s:
                cases = [
                    (b"{not json", {}, 400),
                    (b"\xff\xfe", {}, 400),
                    (b"[1, 2]", {}, 400),
                    (b'{"messages": []}', {}, 404),
                    (b'{"model": 42}', {}, 400),
                    (b'{"model": "nope"}', {}, 404),
                    (b'{"model": "bot"}', {"X-Tenant-Id": "../etc/passwd"}, 400),
                    (b'{"model": "bot"}', {"X-Tenant-Id": "a" * 64}, 400),
                    (b'{"model": "bot"}', {"X-Tenant-Id": "acme corp"}, 400),
                    (b'{"model": "' + b"x" * 20_000 + b'"}', {}, 413),
                ]
                for data, headers, expected in cases:
                    status, _, body = await post(s, router, data, headers=headers)
                    assert status == expected, (data[:40], headers, status, body)
                    assert is_openai_error(body), body

                async def chunks() -> object:
                    for _ in range(20):
                        yield b"x" * 1000

                async with s.post(url(router), data=chunks()) as resp:  # no Content-Length: checked while reading
                    assert resp.status == 413 and is_openai_error(await resp.json())
                async with s.get(url(router, "/v1/nothing")) as resp:
                    assert resp.status == 404 and is_openai_error(await resp.json())
                async with s.get(url(router, "/v1/chat/completions")) as resp:
                    assert resp.status == 405 and is_openai_error(await resp.json())

            status, body = await raw_request(
                router.port or 0,
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
            )
            assert status == 431 and b'"error"' in body
            status, body = await raw_request(router.port or 0, b"GARBAGE\r\n\r\n")
            assert status == 400 and b'"error"' in body

            async with aiohttp.ClientSession() as s:
                status, _, answer = await post(s, router, chat("bot"))
                assert status == 200 and answer["model"] == "base-model"
                async with s.get(url(router, "/healthz")) as resp:
                    assert resp.status == 200
            assert up.count("bot") == 0  # nothing malformed ever went upstream

    run(main())


def test_readyz_waits_for_a_table_and_healthz_does_not() -> None:
    async def main() -> None:
        from loraops.router.server import Router, RouterConfig

        router = Router(RouterConfig(host="127.0.0.1", port=0))  # no source: no table
        await router.start()
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(url(router, "/healthz")) as resp:
                    assert resp.status == 200
                async with s.get(url(router, "/readyz")) as resp:
                    assert resp.status == 503
                status, _, body = await post(s, router, chat("bot"))
                assert status == 503 and is_openai_error(body)
        finally:
            await router.stop()

    run(main())
