"""Choosing a target host: filters say no with a reason, weighers rank what is left.

As in Nova's filter scheduler, a host must pass every filter; the survivors are ranked by
the weighted sum of normalised weigher scores. :func:`explain` returns the verdict for
every host, so a person can see why a host was or was not chosen. Plugins add filters
and weighers through the ``vmmove_add_placement`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vmmove.errors import InvalidInput, PrecheckFailed
from vmmove.model import HostInfo, HostState, Problem, VMInfo

__all__ = [
    "Candidate",
    "Filter",
    "PlacementContext",
    "PlacementRegistry",
    "Weigher",
    "choose",
    "explain",
]


@dataclass(frozen=True, kw_only=True)
class PlacementContext:
    """What placement knows beyond the inventory: moves in flight and their reservations."""

    reserved_memory: Mapping[str, int] = field(default_factory=dict)  # host id -> bytes
    inflight: Mapping[str, int] = field(default_factory=dict)  # host id -> migrations
    headroom: float = 0.0  # share of a host's memory to keep free
    source_cluster: str = ""  # moves stay in their cluster unless nothing there fits


#: ``filter(vm, host, ctx)`` returns ``None`` to accept the host, or the reason it can't.
Filter = Callable[[VMInfo, HostInfo, PlacementContext], str | None]
#: ``weigher(vm, host, ctx)`` returns a raw score, higher is better; scores are normalised.
Weigher = Callable[[VMInfo, HostInfo, PlacementContext], float]


def not_source(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    return "runs the VM already" if host.id == vm.host else None


def accepts_vms(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    return None if host.state is HostState.UP else f"host is {host.state}"


def free_memory(host: HostInfo, ctx: PlacementContext) -> int:
    return host.free_memory - ctx.reserved_memory.get(host.id, 0)


def has_memory(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    keep = int(host.capacity.memory * ctx.headroom)
    free = free_memory(host, ctx) - keep
    if free >= vm.memory:
        return None
    return f"needs {vm.memory >> 20} MiB, {max(free, 0) >> 20} MiB free"


def has_cpus(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    if vm.vcpus <= host.capacity.cpus:
        return None
    return f"needs {vm.vcpus} vCPUs, host has {host.capacity.cpus}"


def cpu_compatible(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    want = vm.extra.get("cpu_arch")
    if want and want != host.cpu.arch:
        return f"CPU architecture {host.cpu.arch}, VM needs {want}"
    return None


def weigh_free_memory(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    return free_memory(host, ctx) / max(host.capacity.memory, 1)


def weigh_same_cluster(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    return 1.0 if host.cluster == vm.extra.get("cluster", ctx.source_cluster) else 0.0


def weigh_inflight(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    return -float(ctx.inflight.get(host.id, 0))


class PlacementRegistry:
    """Filters and weighers in force; built-ins first, then plugins'."""

    def __init__(self) -> None:
        self.filters: dict[str, Filter] = {
            "not-source": not_source,
            "accepts-vms": accepts_vms,
            "memory": has_memory,
            "cpus": has_cpus,
            "cpu-compatible": cpu_compatible,
        }
        self.weighers: dict[str, tuple[Weigher, float]] = {
            "same-cluster": (weigh_same_cluster, 10.0),
            "free-memory": (weigh_free_memory, 1.0),
            "in-flight": (weigh_inflight, 0.5),
        }

    def add_filter(self, name: str, fn: Filter) -> None:
        if name in self.filters:
            raise InvalidInput(f"placement filter {name!r} exists")
        self.filters[name] = fn

    def add_weigher(self, name: str, fn: Weigher, multiplier: float = 1.0) -> None:
        if name in self.weighers:
            raise InvalidInput(f"placement weigher {name!r} exists")
        self.weighers[name] = (fn, multiplier)


@dataclass(frozen=True, kw_only=True)
class Candidate:
    host: HostInfo
    rejected: tuple[str, ...] = ()  # "filter: reason" for each filter that said no
    score: float | None = None  # None when rejected

    @property
    def eligible(self) -> bool:
        return not self.rejected


def explain(
    vm: VMInfo,
    hosts: Iterable[HostInfo],
    ctx: PlacementContext | None = None,
    registry: PlacementRegistry | None = None,
) -> list[Candidate]:
    """Every host with its verdict, best first, rejected last."""
    ctx = ctx or PlacementContext()
    registry = registry or PlacementRegistry()
    hosts = list(hosts)
    verdicts: list[tuple[HostInfo, tuple[str, ...]]] = []
    for host in hosts:
        rejected = tuple(
            f"{name}: {why}"
            for name, fn in registry.filters.items()
            if (why := fn(vm, host, ctx)) is not None
        )
        verdicts.append((host, rejected))
    eligible = [h for h, r in verdicts if not r]
    scores = {h.id: 0.0 for h in eligible}
    for fn, multiplier in registry.weighers.values():
        raw = {h.id: fn(vm, h, ctx) for h in eligible}
        lo, hi = min(raw.values(), default=0.0), max(raw.values(), default=0.0)
        span = hi - lo
        for hid, value in raw.items():
            scores[hid] += multiplier * ((value - lo) / span if span else 1.0)
    out = [Candidate(host=h, rejected=r, score=scores.get(h.id)) for h, r in verdicts]
    # Stable ranking: best score, then name, so the same inventory gives the same choice.
    out.sort(key=lambda c: (not c.eligible, -(c.score or 0.0), c.host.name))
    return out


def choose(
    vm: VMInfo,
    hosts: Iterable[HostInfo],
    ctx: PlacementContext | None = None,
    registry: PlacementRegistry | None = None,
) -> HostInfo:
    """The best host for ``vm``, or :class:`PrecheckFailed` listing why each host was refused."""
    ranked = explain(vm, hosts, ctx, registry)
    if ranked and ranked[0].eligible:
        return ranked[0].host
    problems = [
        Problem(code="no-target", message=f"{c.host.name}: {', '.join(c.rejected)}") for c in ranked
    ]
    raise PrecheckFailed(f"no host can take VM {vm.name}", problems)
