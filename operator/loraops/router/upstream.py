"""Keep-alive client sessions, one per upstream URL, and least-outstanding-requests endpoint choice.

A session per upstream keeps each pod's connection pool separate (a slow pod cannot exhaust the sockets of
the others) and is created once: no request allocates a client. Sessions outlive table reloads, since a reload
usually names the same pods again.
"""

from __future__ import annotations

import aiohttp

from .table import Target


class Upstreams:
    def __init__(self, *, connect_timeout_s: float = 5.0, pool_per_upstream: int = 0) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._outstanding: dict[str, int] = {}
        self._connect_timeout_s = connect_timeout_s
        self._pool = pool_per_upstream

    def session(self, url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(url)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool,
                limit_per_host=0,
                keepalive_timeout=60,
                ttl_dns_cache=30,
                enable_cleanup_closed=False,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
                trust_env=False,
            )
            self._sessions[url] = session
            self._outstanding.setdefault(url, 0)
        return session

    def pick(self, target: Target) -> str:
        urls = target.urls
        if len(urls) == 1:
            return urls[0]
        outstanding = self._outstanding
        return min(urls, key=lambda u: outstanding.get(u, 0))

    def acquire(self, url: str) -> None:
        self._outstanding[url] = self._outstanding.get(url, 0) + 1

    def release(self, url: str) -> None:
        self._outstanding[url] -= 1

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
