"""Running the operator: the kopf registry with one handler module per kind, settings, endpoints."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import random
import threading
from typing import TYPE_CHECKING, Any

from loraops.config import ANNOTATION_PREFIX, FINALIZER, OperatorConfig

if TYPE_CHECKING:
    import kopf

CONTROLLERS = ("training", "adapters", "routing")
"""The packages whose `handlers.register` a controller name stands for. kopf and the handlers are imported
when the operator runs, not when `loraops` builds its parser: the agent sidecar, the router and the offline
commands never load them."""


def build_registry(config: OperatorConfig, *, login: bool = True) -> kopf.OperatorRegistry:
    """A private registry: decorators never touch kopf's process-global one, so tests can run several.

    `login=False` leaves authentication to the caller (the dev-mode runner logs kopf in to its own API);
    the controllers' own client still goes to `config.server`, so tests never reach a real cluster."""
    import kopf

    from loraops.kube.client import KubeClient

    registry = kopf.OperatorRegistry()
    client = KubeClient(config.server, insecure=config.insecure)
    for name in config.controllers:
        importlib.import_module(f"loraops.{name}.handlers").register(registry, config, client)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        apply_settings(settings, config)

    if login and config.server:
        server = config.server

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, insecure=config.insecure)

    return registry


def apply_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    import kopf

    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = config.post_events
    settings.posting.level = logging.INFO


def start_metrics_server(port: int) -> None:
    from prometheus_client import start_http_server

    from loraops.kube.metrics import REGISTRY

    start_http_server(port, registry=REGISTRY)


async def run_async(config: OperatorConfig, stop_flag: asyncio.Event | threading.Event | None = None) -> None:
    import kopf

    registry = build_registry(config)
    liveness = f"http://0.0.0.0:{config.liveness_port}/healthz" if config.liveness_port else None
    await kopf.operator(
        registry=registry,
        clusterwide=config.clusterwide,
        namespaces=config.namespaces or ([] if config.clusterwide else [os.environ.get("POD_NAMESPACE", "default")]),
        liveness_endpoint=liveness,
        standalone=config.standalone,
        priority=peering_priority(config),
        stop_flag=stop_flag,
    )


def peering_priority(config: OperatorConfig) -> int | None:
    """With peering, replicas of equal priority all pause (kopf's rule): without an explicit priority each
    replica draws its own, so exactly one is active and the others stand by."""
    if config.standalone:
        return None
    if config.priority is not None:
        return config.priority
    priority = random.SystemRandom().randint(1, 1_000_000)
    logging.getLogger(__name__).info("peering with priority %d", priority)
    return priority


def _operator(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = operator_config(args)
    if config.metrics_port:
        start_metrics_server(config.metrics_port)
    asyncio.run(run_async(config))
    return 0


def operator_config(args: argparse.Namespace) -> OperatorConfig:
    """The OperatorConfig the `loraops operator` flags describe."""
    return OperatorConfig(
        namespaces=args.namespace or [],
        clusterwide=args.all_namespaces,
        resync_seconds=args.resync_seconds,
        liveness_port=args.liveness_port or None,
        metrics_port=args.metrics_port or None,
        server=args.server,
        insecure=args.insecure,
        standalone=not args.peering,
        priority=args.priority,
        controllers=args.controller or list(CONTROLLERS),
        router_metrics_urls=args.router_metrics_url or [],
        require_signed_adapters=args.require_signed_adapters or [],
        **({"trainer_image": args.trainer_image} if args.trainer_image else {}),
    )


def add_operator_command(sub: Any) -> Any:
    parser = sub.add_parser("operator", help="run the operator (kopf controllers for the three kinds)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="serve this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace")
    parser.add_argument("--resync-seconds", type=float, default=300.0, help="status recomputation period")
    parser.add_argument("--liveness-port", type=int, default=8080, help="0 disables /healthz")
    parser.add_argument("--metrics-port", type=int, default=9090, help="0 disables /metrics")
    parser.add_argument("--server", help="Kubernetes API URL (dev mode); default: in-cluster or kubeconfig")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification (dev mode only)")
    parser.add_argument("--peering", action="store_true", help="run with kopf peering (HA with several replicas)")
    parser.add_argument("--priority", type=int, help="peering priority (default with --peering: a random one)")
    parser.add_argument(
        "--controller", action="append", choices=sorted(CONTROLLERS), help="run only these controllers (repeatable)"
    )
    parser.add_argument(
        "--router-metrics-url", action="append", help="a router replica's /metrics URL for canary analysis (repeatable)"
    )
    parser.add_argument("--trainer-image", help="image of training Jobs whose spec names none")
    parser.add_argument(
        "--require-signed-adapters",
        action="append",
        metavar="NAMESPACE",
        help="LoraAdapters in this namespace must be signed and verified ('*': every namespace; repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return _operator
