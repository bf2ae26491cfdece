"""`loraops dev up | down | demo`."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any


def _dev(args: argparse.Namespace) -> int:
    from loraops.devmode import demo, world

    state = pathlib.Path(args.state)
    if args.action == "up":
        return world.up(state, args.port)
    if args.action == "down":
        return world.down(state)
    return demo.demo(state, headless=args.headless)


def add_dev_command(sub: Any) -> Any:
    parser = sub.add_parser("dev", help="the whole system on this machine (no cluster, no GPU)")
    parser.add_argument("action", choices=["up", "down", "demo"])
    parser.add_argument("--state", default=".loraops", help="folder for kubeconfig, logs and state")
    parser.add_argument("--port", type=int, default=0, help="port of the fake Kubernetes API (up)")
    parser.add_argument("--headless", action="store_true", help="no live display (demo; for tests and CI)")
    return _dev
