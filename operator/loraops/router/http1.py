"""A lean HTTP/1.1 client for the router's upstream calls: one keep-alive pool per upstream, httptools parsing.

The proxy path needs only POST with a JSON body (http://, or https:// with the system CA store), the status,
the Content-Type and the body (whole, or chunk by chunk for SSE). aiohttp's client spends most of its
per-request time on generality this path never uses (request/response objects, header multidicts, cookie and
redirect logic, timers): profiling the router showed it as the largest share of the router's CPU per request.
This client writes the request in one `write`, parses with httptools (C, the parser uvicorn uses) and hands
body bytes to the caller without copies beyond the join.

Connections are reused LIFO; an idle one older than `keepalive_s` is closed instead (kept under uvicorn's 5 s
keep-alive so the router does not write into a socket vLLM is closing). If a reused connection closes before
any byte of the answer arrived, the request is sent once more on a fresh connection: that is the keep-alive race,
and the upstream has not started an answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import time
import urllib.parse

import httptools

_PAUSE_AT = 1 << 20


class ConnectError(OSError):
    """The upstream could not be reached (refused, unreachable, connect timeout)."""


class UpstreamError(OSError):
    """The connection broke, or the answer was not valid HTTP."""


class Response:
    """One answer being received. `status` and `content_type` are set once the headers are in."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter", "content_type", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.content_type = ""

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _PAUSE_AT:
            # The client reads slower than the upstream writes: stop reading the socket, TCP pushes back.
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read(self) -> bytes:
        """The whole body (waits for the end of the answer)."""
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._conn.release()
        return data

    async def read_chunk(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; b"" at the end."""
        while not self._chunks and not self._done:
            await self._wait()
        if self._chunks:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            self._conn.resume()
            return data
        if self._error is not None:
            raise self._error
        self._conn.release()
        return b""

    def close(self) -> None:
        """Abandon the answer (client gone, timeout): the connection is closed, never reused mid-answer.
        A no-op once the answer was read to the end (the connection may already serve another request)."""
        if self._conn.response is self:
            self._conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.got_bytes = False
        self.headers_done = False
        self.framed = False
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0
        self.paused = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:
            return
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.response is None:
            # Bytes on an idle connection: the upstream is not speaking HTTP as we expect.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self.response._finish(UpstreamError(f"invalid HTTP from upstream: {err}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        response = self.response
        if response is not None:
            if self.headers_done and not self.framed:
                response._finish()  # a body delimited by the end of the connection
            else:
                response._finish(UpstreamError("upstream closed the connection"))

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            assert self.response is not None
            self.response.content_type = value.decode("latin-1")
        elif lowered in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.headers_done = True
        self.response.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.response._wake()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._finish()

    # -- used by Pool and Response --

    def send(self, data: bytes) -> Response:
        assert self.transport is not None
        self.response = Response(self)
        self.got_bytes = False
        self.headers_done = False
        self.framed = False
        self.transport.write(data)
        return self.response

    def release(self) -> None:
        response = self.response
        if response is None:
            return
        self.response = None
        if self.keep_alive and response._done and response._error is None and not self.closed:
            self.idle_since = time.monotonic()
            self.pool._idle.append(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.response = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool._forget(self)


class Pool:
    """Keep-alive connections to one upstream base URL (`http://host:port`)."""

    def __init__(self, base_url: str, *, connect_timeout_s: float = 5.0, keepalive_s: float = 4.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"upstream {base_url!r}: only http:// and https:// are supported")
        self.ssl = ssl.create_default_context() if parsed.scheme == "https" else None
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or (443 if self.ssl else 80)
        self.prefix = parsed.path.rstrip("/")
        self.host_header = parsed.netloc.encode()
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl
                )
        except TimeoutError as err:
            raise ConnectError(f"connect to {self.host}:{self.port} timed out") from err
        except OSError as err:
            raise ConnectError(f"connect to {self.host}:{self.port}: {err}") from err
        if conn.transport is None:
            # uvloop may call connection_made after create_connection returns.
            conn.connection_made(transport)
        self._all.add(conn)
        return conn

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    def _request_bytes(self, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
        head = (
            b"POST "
            + self.prefix.encode()
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + self.host_header
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n"
        )
        if headers:
            head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
        return head + b"\r\n" + body

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        """Send the request and wait for the answer's headers. The caller must `read()` to the end (which
        returns the connection to the pool) or `close()` the response."""
        data = self._request_bytes(path, body, headers)
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        while True:
            response = conn.send(data)
            try:
                while not conn.headers_done and not response._done:
                    await response._wait()
            except BaseException:
                conn.close()
                raise
            if conn.headers_done:
                return response
            if reused and not conn.got_bytes:
                # The keep-alive race: the upstream closed an idle connection as we wrote to it.
                reused = False
                conn = await self._connect()
                continue
            conn.close()
            assert response._error is not None
            raise response._error

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
