"""Helpers the planners share: placing a VM in the planner's own context, building a
:class:`~vmmove.fleet.plan.Move`, explaining refusals, utilisation figures, looking up hosts
and clusters."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

from vmmove.errors import NotFound
from vmmove.fleet.plan import Move
from vmmove.model import HostInfo, MigrationMode, PowerState, VMInfo
from vmmove.placement import Candidate, PlacementContext, groups_of, predict
from vmmove.policy import Policy, resolve


def plural(n: int) -> str:
    return "" if n == 1 else "s"


def converges(vm: VMInfo, link: float, schedule: tuple[tuple[int, float], ...]) -> bool:
    return predict(vm, link, downtime=schedule).converges


def _mode(vm: VMInfo) -> MigrationMode:
    return MigrationMode.LIVE if vm.power is PowerState.RUNNING else MigrationMode.COLD


def immovable(vm: VMInfo) -> str | None:
    if vm.power is PowerState.RUNNING and not vm.live_migratable:
        return f"cannot migrate live: {vm.not_migratable_reason or 'the platform says so'}"
    return None


def refusals(ranked: Sequence[Candidate]) -> str:
    """Why no host can take a VM, grouped by filter, with one example each."""
    by_filter: dict[str, list[str]] = {}
    for c in ranked:
        for reason in c.rejected:
            name, _, why = reason.partition(": ")
            by_filter.setdefault(name, []).append(f"{c.host.name}: {why}")
    if not by_filter:
        return "no other host"
    parts = []
    for name, items in sorted(by_filter.items(), key=lambda kv: -len(kv[1])):
        n = len(items)
        parts.append(f"{name} refused {n} host{'s' if n > 1 else ''} (e.g. {items[0]})")
    return "no host can take it: " + "; ".join(parts)


def assign(ctx: PlacementContext, vm: VMInfo, target: str) -> None:
    """Record a planned move in the planner's own context maps."""
    reserved: dict[str, int] = ctx.reserved_memory  # type: ignore[assignment]
    cpus: dict[str, int] = ctx.reserved_cpus  # type: ignore[assignment]
    inflight: dict[str, int] = ctx.inflight  # type: ignore[assignment]
    groups: dict[str, dict[str, int]] = ctx.groups  # type: ignore[assignment]
    reserved[target] = reserved.get(target, 0) + vm.memory
    cpus[target] = cpus.get(target, 0) + vm.vcpus
    inflight[target] = inflight.get(target, 0) + 1
    aff, anti = groups_of(vm)
    for g in {*aff, *anti}:
        per_host = groups.setdefault(g, {})
        per_host[vm.host] = per_host.get(vm.host, 0) - 1
        per_host[target] = per_host.get(target, 0) + 1


def planned_move(
    vm: VMInfo,
    target: HostInfo,
    *,
    source_name: str,
    reason: str,
    placement: str,
    link: float,
    schedule: tuple[tuple[int, float], ...],
) -> Move:
    return Move(
        vm=vm.id,
        vm_name=vm.name,
        source=vm.host,
        target=target.id,
        memory=vm.memory,
        vcpus=vm.vcpus,
        mode=_mode(vm),
        reason=reason,
        placement=placement,
        cost=predict(vm, link, downtime=schedule),
        dirty_rate=float(vm.dirty_rate or 0.0),
        source_name=source_name,
        target_name=target.name,
    )


def longest_first(moves: Iterable[Move]) -> tuple[Move, ...]:
    return tuple(sorted(moves, key=lambda m: (-m.cost.seconds, -m.memory, m.vm_name)))


def utilisation(
    hosts: Sequence[HostInfo], used: Mapping[str, int] | None = None
) -> dict[str, float]:
    """Figures for before/after: hosts holding VMs, mean, spread and deviation of memory use."""
    if not hosts:
        return {}
    utils = [(used or {}).get(h.id, h.allocated.memory) / max(h.capacity.memory, 1) for h in hosts]
    occupied = sum(1 for h in hosts if (used or {}).get(h.id, h.allocated.memory) > 0)
    return {
        "hosts": float(len(hosts)),
        "hosts_used": float(occupied),
        "mean_use": statistics.fmean(utils),
        "max_use": max(utils),
        "min_use": min(utils),
        "stdev_use": statistics.pstdev(utils),
    }


def resolve_policy(policy: str | Policy, extra: Iterable[Policy] = ()) -> Policy:
    return resolve(policy, extra)


def find_host(ref: str, hosts: Sequence[HostInfo]) -> HostInfo:
    for h in hosts:
        if h.id == ref:
            return h
    named = [h for h in hosts if h.name == ref]
    if len(named) == 1:
        return named[0]
    raise NotFound(f"no host {ref!r}" if not named else f"host name {ref!r} is ambiguous")


def used_after(hosts: Sequence[HostInfo], moves: Iterable[Move]) -> dict[str, int]:
    used = {h.id: h.allocated.memory for h in hosts}
    for m in moves:
        used[m.source] = used.get(m.source, 0) - m.memory
        used[m.target] = used.get(m.target, 0) + m.memory
    return used


def check_cluster(cluster: str | None, hosts: Sequence[HostInfo]) -> None:
    if cluster is not None and all(h.cluster != cluster for h in hosts):
        known = ", ".join(sorted({h.cluster for h in hosts})) or "none"
        raise NotFound(f"no cluster {cluster!r} (known: {known})")
