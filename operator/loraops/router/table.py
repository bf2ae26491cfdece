"""The route table compiled for the hot path: every lookup a request needs is one dict access.

Selection is weighted rendezvous hashing: for a user key hashed once to 64 bits, each backend gets the score
`-ln(u_b) / weight_b` where `u_b` is a per-backend uniform draw derived from the key, and the lowest score
wins. The winner is exactly weight-proportional over users, a user keeps the same backend while weights hold,
and raising one backend's weight only lowers its own scores: users move *to* it, never away from it (the
10% → 20% canary step moves nobody back to stable). Backends are identified by served name, not by position,
so reordering a list or adding a backend moves only the users the new backend wins.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from loraops.api.common import parse_duration
from loraops.api.route import CircuitBreakerSpec, RouteTable, RouteTraffic, TrafficEntry

BASE_LABEL = "base"
"""The `adapter` label (and `x-loraops-adapter` value) of requests the base model answers."""

_MASK = (1 << 64) - 1
_TWO_64 = float(1 << 64)


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    # splitmix64 finaliser: turns (user hash XOR backend seed) into an independent-looking 64-bit draw, so
    # one blake2b per request serves every backend.
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the name written into `model` and the pods that serve it."""

    adapter: str
    """Metric label and `x-loraops-adapter` value: the LoraAdapter name, or `base`."""
    served_name: str
    urls: tuple[str, ...]
    is_base: bool


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    target: Target
    weight: int
    seed: int
    inv_weight: float


@dataclass(frozen=True, slots=True)
class MirrorTarget:
    target: Target
    fraction: float


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    consecutive_failures: int
    max_error_rate: float | None
    window_s: float
    cooldown_s: float
    half_open_probes: int

    @classmethod
    def from_spec(cls, spec: CircuitBreakerSpec) -> BreakerConfig:
        return cls(
            consecutive_failures=spec.consecutive_failures,
            max_error_rate=spec.max_error_rate,
            window_s=parse_duration(spec.window),
            cooldown_s=parse_duration(spec.cooldown),
            half_open_probes=spec.half_open_probes,
        )


@dataclass(frozen=True, slots=True)
class Entry:
    backends: tuple[WeightedBackend, ...]
    mirror: MirrorTarget | None

    def select(self, user_hash: int) -> Target:
        backends = self.backends
        if len(backends) == 1:
            return backends[0].target
        best: Target | None = None
        best_score = math.inf
        for backend in backends:
            if backend.weight == 0:
                continue
            # +1 keeps the draw in (0, 1]: log(0) is undefined.
            draw = (_mix(user_hash ^ backend.seed) + 1) / _TWO_64
            score = -math.log(draw) * backend.inv_weight
            if score < best_score:
                best_score = score
                best = backend.target
        return best if best is not None else backends[0].target


@dataclass(slots=True)
class Route:
    model: str
    base: Target
    by_tenant: dict[str, Entry]
    default: Entry | None
    allowed: dict[str, frozenset[str]]
    """Served name → tenants allowed on it; a served name absent here is open to every tenant."""
    fallback_to_base: bool
    timeout_s: float
    breaker: BreakerConfig
    tenants: frozenset[str] = field(default_factory=frozenset)

    def entry_for(self, tenant: str | None) -> Entry | None:
        if tenant is not None:
            entry = self.by_tenant.get(tenant)
            if entry is not None:
                return entry
        return self.default

    def allows(self, tenant: str | None, target: Target) -> bool:
        allowed = self.allowed.get(target.served_name)
        return allowed is None or (tenant is not None and tenant in allowed)


@dataclass(slots=True)
class CompiledTable:
    routes: dict[str, Route]
    tenants: frozenset[str]
    """Every tenant the table names: the `tenant` metric label keeps these and maps the rest to `other`."""


def _urls(route: RouteTraffic, served_name: str) -> tuple[str, ...]:
    urls = (route.endpoints or {}).get(served_name)
    return tuple(u.rstrip("/") for u in urls) if urls else (route.base_url.rstrip("/"),)


def _compile_entry(route: RouteTraffic, entry: TrafficEntry, base: Target) -> Entry:
    backends: list[WeightedBackend] = []
    for backend in entry.backends:
        if backend.adapter is None and backend.served_name == route.base_served_model:
            target = base
        else:
            target = Target(
                adapter=backend.adapter or BASE_LABEL,
                served_name=backend.served_name,
                urls=_urls(route, backend.served_name),
                is_base=backend.adapter is None,
            )
        weight = backend.weight
        backends.append(
            WeightedBackend(
                target=target,
                weight=weight,
                seed=key_hash(f"{route.model}\0{backend.served_name}"),
                inv_weight=1.0 / weight if weight else math.inf,
            )
        )
    mirror = None
    if entry.mirror is not None:
        mirror = MirrorTarget(
            target=Target(
                adapter=entry.mirror.adapter,
                served_name=entry.mirror.served_name,
                urls=_urls(route, entry.mirror.served_name),
                is_base=False,
            ),
            fraction=entry.mirror.percent / 100.0,
        )
    return Entry(backends=tuple(backends), mirror=mirror)


def compile_route(route: RouteTraffic) -> Route:
    base = Target(
        adapter=BASE_LABEL,
        served_name=route.base_served_model,
        urls=_urls(route, route.base_served_model),
        is_base=True,
    )
    by_tenant: dict[str, Entry] = {}
    default: Entry | None = None
    tenants: set[str] = set()
    for entry in route.entries:
        compiled = _compile_entry(route, entry, base)
        if entry.tenants:
            for tenant in entry.tenants:
                # The first entry naming a tenant wins, as the controller lists specific rules first.
                by_tenant.setdefault(tenant, compiled)
                tenants.add(tenant)
        elif default is None:
            default = compiled
    allowed = {name: frozenset(ts) for name, ts in (route.allowed_tenants or {}).items()}
    for ts in allowed.values():
        tenants.update(ts)
    return Route(
        model=route.model,
        base=base,
        by_tenant=by_tenant,
        default=default,
        allowed=allowed,
        fallback_to_base=route.fallback.mode == "base",
        timeout_s=route.fallback.timeout_seconds,
        breaker=BreakerConfig.from_spec(route.fallback.circuit_breaker),
        tenants=frozenset(tenants),
    )


def compile_table(table: RouteTable) -> CompiledTable:
    routes: dict[str, Route] = {}
    tenants: set[str] = set()
    for traffic in table.routes:
        if traffic.model in routes:
            raise ValueError(f"route {traffic.model!r} is listed twice")
        route = compile_route(traffic)
        routes[traffic.model] = route
        tenants.update(route.tenants)
    return CompiledTable(routes=routes, tenants=frozenset(tenants))
