"""`loraops router`: the command-line entry of the router."""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import signal
from collections.abc import Callable

from .server import Router, RouterConfig
from .sources import FileSource, KubeConnection, KubeSource, TableSource
from .tenants import ApiKeys


def add_router_command(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("router", help="run the OpenAI-compatible router (routes file or AdapterRoute status)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--routes", metavar="FILE", help="YAML routes file (`routes: [...]`), reloaded on change")
    source.add_argument("--kube", action="store_true", help="serve AdapterRoute status.traffic (list + watch)")
    p.add_argument("--kubeconfig", help="kubeconfig for --kube (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context for --kube")
    p.add_argument("-n", "--namespace", action="append", help="namespace for --kube (repeatable; default: all)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--tenant-header", default="X-Tenant-Id")
    p.add_argument("--user-header", default="X-User-Id", help="header whose value keeps a user on one version")
    p.add_argument("--api-keys", metavar="FILE", help="YAML `key: tenant` map; if set, the key decides the tenant")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--max-header-bytes", type=int, default=16 * 1024)
    p.add_argument("--base-timeout", type=float, default=600.0, help="seconds to the first byte from the base model")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--no-stream-usage", action="store_true", help="do not ask upstream for usage chunks in streams")
    p.add_argument("--mirror-queue", type=int, default=256)
    p.add_argument("--mirror-concurrency", type=int, default=8)
    p.add_argument("--reload-interval", type=float, default=1.0, help="seconds between routes file checks")
    p.add_argument("-v", "--verbose", action="store_true")
    return _run


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = RouterConfig(
        host=args.host,
        port=args.port,
        tenant_header=args.tenant_header,
        user_header=args.user_header,
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        base_timeout_s=args.base_timeout,
        connect_timeout_s=args.connect_timeout,
        stream_usage=not args.no_stream_usage,
        mirror_queue=args.mirror_queue,
        mirror_concurrency=args.mirror_concurrency,
    )
    source: TableSource
    if args.routes:
        source = FileSource(pathlib.Path(args.routes), interval_s=args.reload_interval)
    else:
        source = KubeSource(KubeConnection.load(args.kubeconfig, args.context), args.namespace)
    api_keys = ApiKeys(pathlib.Path(args.api_keys)) if args.api_keys else None
    router = Router(config, source, api_keys=api_keys)
    _install_uvloop()
    asyncio.run(_serve(router))
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(router: Router) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await router.start()
    try:
        await stop.wait()
    finally:
        await router.stop()
