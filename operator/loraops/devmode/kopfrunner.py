"""Real kopf in a background thread, pointed at exactly one API URL (the fake API in tests and dev mode)."""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import kopf
from kopf._core.intents.causes import Activity

_LOGIN_ID = "loraops-devmode-login"


def fast_settings(settings: kopf.OperatorSettings) -> None:
    """Settings for a local API: retry in fractions of a second, no peering, no Events unless asked."""
    settings.peering.standalone = True
    settings.posting.enabled = False
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1.0, 2.0]
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 60  # streams end now and then and resume from the resourceVersion
    settings.watching.reconnect_backoff = 0.05
    # The fake API echoes every write through the watch at once; the 5 s default only costs on misses.
    settings.persistence.consistency_timeout = 1.0
    settings.execution.default_backoff = 0.2
    settings.queueing.exit_timeout = 0.5
    settings.queueing.error_delays = [0.1, 0.2, 0.5, 1.0, 2.0]
    settings.background.cancellation_polling = 0.2
    settings.process.ultimate_exiting_timeout = 10


def load_registry(modules: Iterable[str]) -> kopf.OperatorRegistry:
    """Import (or re-import) handler modules into a fresh registry, so that runs never share handlers."""
    registry = kopf.OperatorRegistry()
    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        for name in modules:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
            else:
                importlib.import_module(name)
    finally:
        kopf.set_default_registry(previous)
    return registry


class OperatorThread:
    """`kopf.operator()` in its own thread and loop; `start()` returns once kopf says it is ready.

    Either pass a registry (handlers decorated with `registry=`) or module names to import into a fresh
    one. Handler modules must not define `@kopf.on.login`: the runner logs in to `url` and nowhere else.
    """

    def __init__(
        self,
        url: str,
        *,
        registry: kopf.OperatorRegistry | None = None,
        modules: Iterable[str] = (),
        namespaces: Iterable[str] = (),
        clusterwide: bool = False,
        settings: Callable[[kopf.OperatorSettings], None] | None = None,
        memo: Any = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.namespaces = list(namespaces)
        if clusterwide == bool(self.namespaces):
            raise ValueError("pass either clusterwide=True or namespaces=[...]")
        self.url, self.clusterwide, self.memo, self.ready_timeout = url, clusterwide, memo, ready_timeout
        self.registry = registry if registry is not None else load_registry(modules)
        self.settings = kopf.OperatorSettings()
        fast_settings(self.settings)
        if settings is not None:
            settings(self.settings)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def _install_login(self) -> None:
        handlers = self.registry._activities._handlers
        handlers[:] = [h for h in handlers if h.id != _LOGIN_ID]  # from an earlier run on this registry
        foreign = [h.id for h in handlers if h.activity == Activity.AUTHENTICATION and not h._fallback]
        if foreign:
            raise ValueError(f"the registry has its own login handlers {foreign}: they could reach a real cluster")
        url = self.url

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

        kopf.on.login(registry=self.registry, id=_LOGIN_ID)(login)

    def start(self) -> OperatorThread:
        self._install_login()
        self._thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.ready_timeout) or self.error is not None:
            self.stop()
            raise RuntimeError(f"kopf did not become ready against {self.url}") from self.error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    settings=self.settings,
                    standalone=True,
                    clusterwide=self.clusterwide,
                    namespaces=self.namespaces,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    memo=self.memo,
                )
            )
        except BaseException as exc:
            self.error = exc
            self._ready.set()  # wake start() so that it reports the failure instead of waiting it out

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
