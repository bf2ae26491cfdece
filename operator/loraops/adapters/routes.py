"""Which AdapterRoutes send traffic to an adapter (pure): deletion waits while any does."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def routes_sending_to(adapter: str, routes: list[Obj]) -> list[str]:
    """Names of the routes that want the adapter (spec) or serve it now (status.traffic, mirror included).

    Both count: a route whose spec moved away may still be rolling traffic off it, and a route that wants
    it will send traffic as soon as its controller catches up."""
    names = []
    for route in routes:
        spec = route.get("spec") or {}
        wanted = {spec.get("adapter")} | {rule.get("adapter") for rule in spec.get("tenants") or []}
        traffic = (route.get("status") or {}).get("traffic") or {}
        served: set[str | None] = set()
        for entry in traffic.get("entries") or []:
            served |= {b.get("adapter") for b in entry.get("backends") or [] if b.get("weight", 0) > 0}
            if entry.get("mirror"):
                served.add(entry["mirror"].get("adapter"))
        if adapter in wanted | served:
            names.append(route["metadata"]["name"])
    return sorted(names)
