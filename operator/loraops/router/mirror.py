"""Shadow traffic: copies of requests to a candidate adapter, entirely off the client's path.

The request handler only does `offer()`: a non-blocking put into a bounded queue (a full queue drops the copy
and counts it). A fixed number of workers send the copies, so a slow or failing shadow can use at most
`concurrency` sockets and never delays or fails a client request. Each shadow answer is compared with the
primary answer once that one is known: exact text match and length ratio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from .metrics import RouterMetrics
from .table import Target
from .upstream import Upstreams

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MirrorJob:
    route: str
    target: Target
    path: str
    body: dict[str, Any]
    primary: asyncio.Future[str | None]
    """The primary answer's text, None if it has none (an error, or a stream that was not collected)."""


def answer_text(payload: dict[str, Any]) -> str | None:
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    first = choices[0]
    if not isinstance(first, dict):
        return None
    message = first.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else None
    text = first.get("text")
    return text if isinstance(text, str) else None


class Mirror:
    def __init__(
        self,
        upstreams: Upstreams,
        metrics: RouterMetrics,
        *,
        queue_size: int = 256,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        compare_wait_s: float = 120.0,
    ) -> None:
        self.upstreams = upstreams
        self.metrics = metrics
        self.queue: asyncio.Queue[MirrorJob] = asyncio.Queue(maxsize=queue_size)
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.compare_wait_s = compare_wait_s
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"mirror-{i}") for i in range(self.concurrency)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def offer(self, job: MirrorJob) -> bool:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.child(self.metrics.mirror, job.route, job.target.adapter, "dropped").inc()
            return False
        return True

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._send(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a shadow must never take a worker down
                log.exception("mirror request to %s failed unexpectedly", job.target.adapter)
            finally:
                self.queue.task_done()

    async def _send(self, job: MirrorJob) -> None:
        m = self.metrics
        body = dict(job.body)
        body["model"] = job.target.served_name
        body.pop("stream", None)
        body.pop("stream_options", None)
        url = self.upstreams.pick(job.target)
        pool = self.upstreams.pool(url)
        started = time.perf_counter()
        self.upstreams.acquire(url)
        outcome = "error"
        payload: dict[str, Any] | None = None
        resp = None
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await pool.post(job.path, json.dumps(body).encode())
                raw = await resp.read()
            if resp.status == 200:
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    payload = parsed
                    outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
        except (OSError, ValueError):
            outcome = "error"
        finally:
            if resp is not None:
                resp.close()
            self.upstreams.release(url)
        adapter = job.target.adapter
        m.child(m.mirror, job.route, adapter, outcome).inc()
        m.child(m.mirror_duration, job.route, adapter).observe(time.perf_counter() - started)
        if payload is None:
            return
        usage = payload.get("usage")
        if isinstance(usage, dict):
            for kind in ("prompt", "completion"):
                count = usage.get(f"{kind}_tokens")
                if isinstance(count, int) and count > 0:
                    m.child(m.mirror_tokens, job.route, adapter, kind).inc(count)
        shadow_text = answer_text(payload)
        try:
            primary_text = await asyncio.wait_for(asyncio.shield(job.primary), self.compare_wait_s)
        except TimeoutError:
            return
        if primary_text is None or shadow_text is None:
            return
        m.child(m.mirror_match, job.route, adapter, "true" if shadow_text == primary_text else "false").inc()
        if primary_text:
            m.child(m.mirror_length_ratio, job.route, adapter).observe(len(shadow_text) / len(primary_text))
