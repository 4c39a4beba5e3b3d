"""Choosing a target host: filters say no with a reason, weighers rank what is left.

As in Nova's filter scheduler, a host must pass every filter; the survivors are ranked by
the weighted sum of normalised weigher scores. :func:`explain` returns the verdict for
every host, with each weigher's share of the score, so a person can see why a host was
or was not chosen. Plugins add filters and weighers through the ``vmmove_add_placement``
hook.

VM groups and requirements are read from :attr:`VMInfo.extra` (comma-separated lists):
``affinity`` and ``anti_affinity`` (group names), ``cpu_arch``, ``cpu_vendor``,
``cpu_features``, ``datastores``; hosts declare ``datastores`` in :attr:`HostInfo.extra`.
Where the VMs of a group run comes from :attr:`PlacementContext.groups`
(:func:`build_context` fills it from an inventory).

:func:`predict` (from :mod:`vmmove.prediction`, the one migration cost model) ranks hosts
by what moving there costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vmmove.errors import InvalidInput, PrecheckFailed
from vmmove.model import HostInfo, HostState, Problem, Storage, VMInfo
from vmmove.prediction import DEFAULT_LINK, Cost, link_of, predict, working_set

__all__ = [
    "DEFAULT_LINK",
    "Candidate",
    "Cost",
    "Filter",
    "PlacementContext",
    "PlacementRegistry",
    "Weigher",
    "best",
    "build_context",
    "choose",
    "explain",
    "groups_of",
    "link_of",
    "predict",
    "working_set",
]


@dataclass(frozen=True, kw_only=True)
class PlacementContext:
    """What placement knows beyond the inventory: moves in flight and their reservations.

    The engine fills the first three fields; the fleet planner fills them all, and updates
    its own mappings as it assigns moves (they are read, never copied, by the filters).
    """

    reserved_memory: Mapping[str, int] = field(default_factory=dict)  # host id -> bytes
    inflight: Mapping[str, int] = field(default_factory=dict)  # host id -> migrations
    headroom: float = 0.0  # share of a host's memory to keep free
    source_cluster: str = ""  # moves stay in their cluster unless nothing there fits
    avoid: frozenset[str] = frozenset()  # host ids being emptied: they take no VMs
    groups: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # group -> host -> VMs
    reserved_cpus: Mapping[str, int] = field(default_factory=dict)  # host id -> vCPUs
    cpu_ratio: float | None = None  # vCPUs a host may allocate per CPU; None: no limit
    hosts: Mapping[str, HostInfo] = field(default_factory=dict)  # by id: the source's link

    def __post_init__(self) -> None:
        if not 0.0 <= self.headroom < 1.0:
            raise InvalidInput(f"headroom must lie in [0, 1), not {self.headroom!r}")
        if self.cpu_ratio is not None and not self.cpu_ratio > 0:
            raise InvalidInput(f"cpu_ratio must be positive, not {self.cpu_ratio!r}")


#: ``filter(vm, host, ctx)`` returns ``None`` to accept the host, or the reason it can't.
Filter = Callable[[VMInfo, HostInfo, PlacementContext], str | None]
#: ``weigher(vm, host, ctx)`` returns a raw score, higher is better; scores are normalised.
Weigher = Callable[[VMInfo, HostInfo, PlacementContext], float]


def _names(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def groups_of(vm: VMInfo) -> tuple[list[str], list[str]]:
    """The VM's affinity and anti-affinity group names, from ``extra``."""
    return _names(vm.extra.get("affinity")), _names(vm.extra.get("anti_affinity"))


# ---- filters ----------------------------------------------------------------------------
def not_source(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    return "runs the VM already" if host.id == vm.host else None


def accepts_vms(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    return None if host.state is HostState.UP else f"host is {host.state}"


def not_draining(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    return "being emptied" if host.id in ctx.avoid else None


def free_memory(host: HostInfo, ctx: PlacementContext) -> int:
    return host.free_memory - ctx.reserved_memory.get(host.id, 0)


def has_memory(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    keep = int(host.capacity.memory * ctx.headroom)
    free = free_memory(host, ctx) - keep
    if free >= vm.memory:
        return None
    extra = f" after {ctx.headroom:.0%} headroom" if keep else ""
    return f"needs {vm.memory >> 20} MiB, {max(free, 0) >> 20} MiB free{extra}"


def has_cpus(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    if vm.vcpus > host.capacity.cpus:
        return f"needs {vm.vcpus} vCPUs, host has {host.capacity.cpus}"
    if ctx.cpu_ratio is not None:
        limit = int(host.capacity.cpus * ctx.cpu_ratio)
        used = host.allocated.cpus + ctx.reserved_cpus.get(host.id, 0)
        if used + vm.vcpus > limit:
            return f"needs {vm.vcpus} vCPUs, {max(limit - used, 0)} of {limit} left"
    return None


def cpu_compatible(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    want = vm.extra.get("cpu_arch")
    if want and want != host.cpu.arch:
        return f"CPU architecture {host.cpu.arch}, VM needs {want}"
    vendor = vm.extra.get("cpu_vendor")
    if vendor and host.cpu.vendor and vendor != host.cpu.vendor:
        return f"CPU vendor {host.cpu.vendor}, VM needs {vendor}"
    missing = [f for f in _names(vm.extra.get("cpu_features")) if f not in host.cpu.features]
    if missing:
        return f"CPU lacks {', '.join(sorted(missing))}"
    return None


def storage_reachable(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    """Shared disks stay where they are: the target must see every datastore the VM uses.
    (Local disks are copied with the VM; a diskless VM needs nothing.)"""
    need = _names(vm.extra.get("datastores"))
    if not need or vm.storage is not Storage.SHARED:
        return None
    seen = set(_names(host.extra.get("datastores")))
    missing = [d for d in need if d not in seen]
    return f"cannot reach datastore {', '.join(missing)}" if missing else None


def _others(vm: VMInfo, group: str, ctx: PlacementContext) -> dict[str, int]:
    """Where the *other* VMs of ``group`` run, by host id."""
    out = {}
    for hid, count in ctx.groups.get(group, {}).items():
        n = count - (1 if hid == vm.host else 0)
        if n > 0:
            out[hid] = n
    return out


def affinity(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    for group in groups_of(vm)[0]:
        homes = {h for h in _others(vm, group, ctx) if h not in ctx.avoid}
        if homes and host.id not in homes:
            where = ", ".join(sorted(homes)[:3]) + (", ..." if len(homes) > 3 else "")
            return f"group {group} runs on {where}"
    return None


def anti_affinity(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    for group in groups_of(vm)[1]:
        n = _others(vm, group, ctx).get(host.id, 0)
        if n:
            many = n > 1
            return (
                f"{n} other VM{'s' if many else ''} of group {group} run{'' if many else 's'} there"
            )
    return None


# ---- weighers ---------------------------------------------------------------------------
def weigh_free_memory(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    return free_memory(host, ctx) / max(host.capacity.memory, 1)


def weigh_cpu_load(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    used = host.allocated.cpus + ctx.reserved_cpus.get(host.id, 0)
    return -used / max(host.capacity.cpus, 1)


def weigh_same_cluster(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    return 1.0 if host.cluster == vm.extra.get("cluster", ctx.source_cluster) else 0.0


def weigh_inflight(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    return -float(ctx.inflight.get(host.id, 0))


def weigh_migration_cost(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> float:
    """Minus the predicted seconds: the slower link of the two, shared with moves in flight."""
    src = ctx.hosts.get(vm.host)
    link = min(link_of(src, link_of(host)), link_of(host))
    share = link / (1 + max(ctx.inflight.get(vm.host, 0), ctx.inflight.get(host.id, 0)))
    cost = predict(vm, share)
    return -(cost.seconds if cost.converges else 1e9)


class PlacementRegistry:
    """Filters and weighers in force; built-ins first, then plugins'."""

    def __init__(self) -> None:
        self.filters: dict[str, Filter] = {
            "not-source": not_source,
            "accepts-vms": accepts_vms,
            "draining": not_draining,
            "memory": has_memory,
            "cpus": has_cpus,
            "cpu-compatible": cpu_compatible,
            "storage": storage_reachable,
            "affinity": affinity,
            "anti-affinity": anti_affinity,
        }
        self.weighers: dict[str, tuple[Weigher, float]] = {
            "same-cluster": (weigh_same_cluster, 10.0),
            "free-memory": (weigh_free_memory, 1.0),
            "cpu-load": (weigh_cpu_load, 0.25),
            "in-flight": (weigh_inflight, 0.5),
            "migration-cost": (weigh_migration_cost, 0.5),
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
    weights: Mapping[str, float] = field(default_factory=dict)  # weigher -> share of score

    @property
    def eligible(self) -> bool:
        return not self.rejected

    def __str__(self) -> str:
        if self.rejected:
            return f"{self.host.name}: refused: {'; '.join(self.rejected)}"
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.weights.items() if v)
        return f"{self.host.name}: score {self.score or 0.0:.2f}" + (f" ({parts})" if parts else "")


def _verdicts(
    vm: VMInfo,
    hosts: list[HostInfo],
    ctx: PlacementContext,
    registry: PlacementRegistry,
    every_reason: bool,
) -> list[tuple[HostInfo, tuple[str, ...]]]:
    filters = list(registry.filters.items())
    out: list[tuple[HostInfo, tuple[str, ...]]] = []
    for host in hosts:
        if every_reason:
            rejected = tuple(
                f"{name}: {why}" for name, fn in filters if (why := fn(vm, host, ctx)) is not None
            )
        else:
            rejected = ()
            for name, fn in filters:
                why = fn(vm, host, ctx)
                if why is not None:
                    rejected = (f"{name}: {why}",)
                    break
        out.append((host, rejected))
    return out


def _rank(
    vm: VMInfo,
    verdicts: list[tuple[HostInfo, tuple[str, ...]]],
    ctx: PlacementContext,
    registry: PlacementRegistry,
) -> list[Candidate]:
    eligible = [h for h, r in verdicts if not r]
    scores = {h.id: 0.0 for h in eligible}
    weights: dict[str, dict[str, float]] = {h.id: {} for h in eligible}
    for name, (fn, multiplier) in registry.weighers.items():
        raw = {h.id: fn(vm, h, ctx) for h in eligible}
        lo, hi = min(raw.values(), default=0.0), max(raw.values(), default=0.0)
        span = hi - lo
        for hid, value in raw.items():
            part = multiplier * ((value - lo) / span if span else 1.0)
            scores[hid] += part
            weights[hid][name] = part
    out = [
        Candidate(host=h, rejected=r, score=scores.get(h.id), weights=weights.get(h.id, {}))
        for h, r in verdicts
    ]
    # Stable ranking: best score, then name, so the same inventory gives the same choice.
    out.sort(key=lambda c: (not c.eligible, -(c.score or 0.0), c.host.name))
    return out


def explain(
    vm: VMInfo,
    hosts: Iterable[HostInfo],
    ctx: PlacementContext | None = None,
    registry: PlacementRegistry | None = None,
) -> list[Candidate]:
    """Every host with its verdict, best first, rejected last.

    A rejected host lists every filter that refused it; an eligible one its score and the
    share each weigher contributed (``Candidate.weights``).
    """
    ctx = ctx or PlacementContext()
    registry = registry or PlacementRegistry()
    return _rank(vm, _verdicts(vm, list(hosts), ctx, registry, True), ctx, registry)


def choose(
    vm: VMInfo,
    hosts: Iterable[HostInfo],
    ctx: PlacementContext | None = None,
    registry: PlacementRegistry | None = None,
) -> HostInfo:
    """The best host for ``vm``, or :class:`PrecheckFailed` listing why each host was refused."""
    return best(vm, hosts, ctx, registry)[0].host


def best(
    vm: VMInfo,
    hosts: Iterable[HostInfo],
    ctx: PlacementContext | None = None,
    registry: PlacementRegistry | None = None,
) -> list[Candidate]:
    """The eligible hosts, best first (filters stop at the first refusal: faster than
    :func:`explain`); :class:`PrecheckFailed` with every reason when none is eligible."""
    ctx = ctx or PlacementContext()
    registry = registry or PlacementRegistry()
    hosts = list(hosts)
    ranked = _rank(vm, _verdicts(vm, hosts, ctx, registry, False), ctx, registry)
    if ranked and ranked[0].eligible:
        return [c for c in ranked if c.eligible]
    ranked = explain(vm, hosts, ctx, registry)
    problems = [
        Problem(code="no-target", message=f"{c.host.name}: {', '.join(c.rejected)}") for c in ranked
    ]
    raise PrecheckFailed(f"no host can take VM {vm.name}", problems)


def build_context(
    hosts: Iterable[HostInfo],
    vms: Iterable[VMInfo],
    *,
    headroom: float = 0.0,
    avoid: Iterable[str] = (),
    cpu_ratio: float | None = None,
    source_cluster: str = "",
) -> PlacementContext:
    """A context for planning over an inventory: where each group's VMs run, the hosts by id,
    and fresh (mutable) reservation and in-flight maps the planner fills as it assigns."""
    groups: dict[str, dict[str, int]] = {}
    for vm in vms:
        aff, anti = groups_of(vm)
        for group in {*aff, *anti}:
            per_host = groups.setdefault(group, {})
            per_host[vm.host] = per_host.get(vm.host, 0) + 1
    return PlacementContext(
        reserved_memory={},
        inflight={},
        headroom=headroom,
        source_cluster=source_cluster,
        avoid=frozenset(avoid),
        groups=groups,
        reserved_cpus={},
        cpu_ratio=cpu_ratio,
        hosts={h.id: h for h in hosts},
    )
