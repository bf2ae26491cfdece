"""Keep-alive connection pools, one per upstream URL, and least-outstanding-requests endpoint choice.

A pool per upstream keeps each pod's connections separate (a slow pod cannot exhaust the sockets of the others)
and is created once: no request allocates a client. Pools outlive table reloads, since a reload usually names
the same pods again.
"""

from __future__ import annotations

from .http1 import Pool
from .table import Target


class Upstreams:
    def __init__(self, *, connect_timeout_s: float = 5.0, keepalive_s: float = 4.0) -> None:
        self._pools: dict[str, Pool] = {}
        self._outstanding: dict[str, int] = {}
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s

    def pool(self, url: str) -> Pool:
        pool = self._pools.get(url)
        if pool is None:
            pool = Pool(url, connect_timeout_s=self._connect_timeout_s, keepalive_s=self._keepalive_s)
            self._pools[url] = pool
        return pool

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
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
