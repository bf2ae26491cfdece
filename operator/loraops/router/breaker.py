"""Circuit breaker per (route, adapter): closed → open → half-open → closed.

Closed: every request goes to the adapter. It opens after `consecutive_failures` failures in a row, or when
the failure rate over the last `window` exceeds `max_error_rate` (once the window holds at least
`consecutive_failures` requests, so one early failure cannot open it). Open: the adapter's share goes to the
base model until `cooldown` has passed. Half-open: up to `half_open_probes` requests at a time try the
adapter; that many successes close it, one failure opens it again for another cooldown.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from .table import BreakerConfig

_BUCKETS = 10


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    __slots__ = (
        "_bucket_s",
        "_buckets",
        "_clock",
        "_consecutive",
        "_on_change",
        "_opened_at",
        "_probe_successes",
        "_probes_in_flight",
        "config",
        "state",
    )

    def __init__(
        self,
        config: BreakerConfig,
        on_change: Callable[[State], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.state = State.CLOSED
        self._clock = clock
        self._on_change = on_change
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._bucket_s = max(config.window_s / _BUCKETS, 1e-3)
        # [bucket index, requests, failures]: a ring of time buckets so the error rate costs O(1) per request.
        self._buckets: list[list[int]] = [[-1, 0, 0] for _ in range(_BUCKETS)]

    def reconfigure(self, config: BreakerConfig) -> None:
        if config != self.config:
            self.config = config
            self._bucket_s = max(config.window_s / _BUCKETS, 1e-3)
            self._buckets = [[-1, 0, 0] for _ in range(_BUCKETS)]

    def _set(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def allow(self) -> bool:
        """Whether this request may try the adapter. A True in half-open takes a probe slot: the caller must
        report the outcome with `record`."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            if self._clock() - self._opened_at < self.config.cooldown_s:
                return False
            self._set(State.HALF_OPEN)
            self._probes_in_flight = 0
            self._probe_successes = 0
        if self._probes_in_flight >= self.config.half_open_probes:
            return False
        self._probes_in_flight += 1
        return True

    def cooldown_over(self) -> bool:
        """Whether the next `allow` may let a probe through."""
        return self.state is not State.OPEN or self._clock() - self._opened_at >= self.config.cooldown_s

    def abandon(self) -> None:
        """The request ended with no verdict (the client left): free its half-open probe slot, count nothing."""
        if self.state is State.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def record(self, success: bool) -> None:
        if self.state is State.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if not success:
                self._open()
                return
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_probes:
                self._consecutive = 0
                self._buckets = [[-1, 0, 0] for _ in range(_BUCKETS)]
                self._set(State.CLOSED)
            return
        if self.state is State.OPEN:
            # A request admitted before the breaker opened finishes late: it must not reset the cooldown.
            return
        now_bucket = int(self._clock() / self._bucket_s)
        bucket = self._buckets[now_bucket % _BUCKETS]
        if bucket[0] != now_bucket:
            bucket[0], bucket[1], bucket[2] = now_bucket, 0, 0
        bucket[1] += 1
        if success:
            self._consecutive = 0
            return
        bucket[2] += 1
        self._consecutive += 1
        if self._consecutive >= self.config.consecutive_failures:
            self._open()
            return
        if self.config.max_error_rate is not None:
            requests = failures = 0
            oldest = now_bucket - _BUCKETS + 1
            for index, count, failed in self._buckets:
                if index >= oldest:
                    requests += count
                    failures += failed
            if requests >= self.config.consecutive_failures and failures / requests > self.config.max_error_rate:
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._consecutive = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._set(State.OPEN)
