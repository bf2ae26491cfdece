"""The whole system on one machine: the fake Kubernetes API and the real operator, on loopback.

`loraops dev up` runs it in the foreground (state and kubeconfig in `.loraops/`); `loraops dev down` stops
a running one; `loraops dev demo` starts one, plays the story on `examples/`, and stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kopfrunner import OperatorThread
from loraops.runtime import build_registry

DEFAULT_STATE = pathlib.Path(".loraops")
DEFAULT_NAMESPACES = ("team-a",)


def repo_root() -> pathlib.Path:
    """The source checkout (dev mode runs from it: CRDs and examples come from there)."""
    return pathlib.Path(__file__).resolve().parents[3]


@dataclass
class DevCluster:
    api: FakeKubeApi
    operator: OperatorThread
    kubeconfig: pathlib.Path
    state: pathlib.Path


@contextlib.contextmanager
def dev_cluster(
    state: pathlib.Path = DEFAULT_STATE, namespaces: tuple[str, ...] = DEFAULT_NAMESPACES, port: int = 0
) -> Iterator[DevCluster]:
    state.mkdir(parents=True, exist_ok=True)
    with FakeKubeApi(crd_dirs=[repo_root() / "crds"], port=port, history_limit=3) as api:
        for namespace in namespaces:
            api.ensure_namespace(namespace)
        kubeconfig = api.write_kubeconfig(state / "kubeconfig", namespace=namespaces[0])
        config = OperatorConfig(
            namespaces=list(namespaces), server=api.url, resync_seconds=30, retry_seconds=1, liveness_port=None
        )
        operator = OperatorThread(api.url, registry=build_registry(config, login=False), namespaces=namespaces)
        with operator:
            yield DevCluster(api, operator, kubeconfig, state)


def up(state: pathlib.Path, port: int) -> int:
    """Run until Ctrl-C or `loraops dev down`."""
    logging.basicConfig(level=logging.WARNING)
    pidfile = state / "dev.pid"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with dev_cluster(state, port=port) as cluster:
        pidfile.write_text(str(os.getpid()))
        print(f"fake Kubernetes API: {cluster.api.url}")
        print(f"kubeconfig: {cluster.kubeconfig}")
        kubectl = f"kubectl --kubeconfig {cluster.kubeconfig} --cache-dir {state}/kube-cache"
        print(f"try: {kubectl} apply --validate=false -f examples/")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    pidfile.unlink(missing_ok=True)
    return 0


def down(state: pathlib.Path) -> int:
    pidfile = state / "dev.pid"
    if not pidfile.exists():
        print("no dev cluster is running")
        return 0
    pid = int(pidfile.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    print(f"stopped dev cluster (pid {pid})")
    pidfile.unlink(missing_ok=True)
    return 0
