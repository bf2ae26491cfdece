"""The router's upstream HTTP/1.1 client against hand-written servers: framing, keep-alive, the reuse race."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from loraops.devmode.vllm import free_port
from loraops.router.http1 import ConnectError, Pool, UpstreamError
from tests.router.fakes import run

pytestmark = [pytest.mark.router, pytest.mark.parametrize("loop", ["uvloop", "asyncio"])]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


def test_keep_alive_reuses_one_connection_and_survives_upstream_closing_it(loop: str) -> None:
    async def main() -> None:
        async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                body = await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()

        server, url, connections = await serve(keep_alive)
        pool = Pool(url)
        for i in range(20):
            resp = await pool.post("/v1/completions", b'{"n": %d}' % i)
            assert (resp.status, resp.content_type, await resp.read()) == (200, "application/json", b'{"n": %d}' % i)
        assert len(connections) == 1
        pool.close()
        server.close()

        async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Answers as if keep-alive, then closes: the next request on that socket meets a closed connection.
            body = await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

        server, url, connections = await serve(one_shot)
        pool = Pool(url)
        for i in range(20):
            resp = await pool.post("/x", b"%d" % i)
            assert await resp.read() == b"%d" % i
        assert len(connections) == 20
        pool.close()
        server.close()

    run(main(), loop=loop)


def test_chunked_and_close_delimited_bodies(loop: str) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"6\r\ndata: \r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"3\r\nabc\r\n0\r\n\r\n")
            await writer.drain()

        server, url, _ = await serve(chunked)
        pool = Pool(url)
        resp = await pool.post("/s", b"{}")
        assert (resp.status, resp.content_type) == (200, "text/event-stream")
        assert await resp.read_chunk() == b"data: "  # delivered before the rest exists
        release.set()
        rest = b""
        while chunk := await resp.read_chunk():
            rest += chunk
        assert rest == b"abc"
        pool.close()
        server.close()

        async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nno length")
            await writer.drain()

        server, url, _ = await serve(until_close)
        pool = Pool(url)
        resp = await pool.post("/s", b"{}")
        assert (resp.status, await resp.read()) == (500, b"no length")
        pool.close()
        server.close()

    run(main(), loop=loop)


def test_errors_are_typed(loop: str) -> None:
    async def main() -> None:
        with pytest.raises(ConnectError):
            await Pool(f"http://127.0.0.1:{free_port()}").post("/x", b"{}")

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)

        async def cut_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
            await writer.drain()

        for handler in (garbage, hang_up):
            server, url, _ = await serve(handler)
            with pytest.raises(UpstreamError):
                await Pool(url).post("/x", b"{}")
            server.close()
        server, url, _ = await serve(cut_body)
        resp = await Pool(url).post("/x", b"{}")
        with pytest.raises(UpstreamError):
            await resp.read()
        server.close()
        with pytest.raises(ValueError, match="only http"):
            Pool("ftp://example.com")

    run(main(), loop=loop)
