"""Fleet operations: plans a person can read before they run, and a bounded executor.

A **plan** is data: ordered moves, each with why it moves, why that target, and what it is
predicted to cost; the VMs that cannot move and why; the hosts it empties. Three planners
make them:

- :func:`evacuate` empties a host (for maintenance);
- :func:`rebalance` moves VMs off hosts whose memory use sits above their cluster's mean;
- :func:`consolidate` packs VMs onto as few hosts as it can, so the others can be powered off.

Planners only read the inventory; nothing moves until :func:`execute` runs the plan. The
**executor** honours limits per source host, per target host and per cluster; never lets
a host's memory (VMs plus reservations of moves in flight) exceed its capacity; starts the
longest predicted moves first; and schedules with the source link in mind: migrations from
one host share its link, so a guest that writes memory fast runs alone at full bandwidth
(the next move starts as it nears its end, so the link never idles), while light guests
run together. A failed move is retried on another host; the report says where every VM
ended and why any stayed.

Only the public :class:`~vmmove.Connection` API is used: ``migrate``, ``hosts``, ``vms``,
``host`` and the :class:`~vmmove.Migration` handles. On a virtual clock the executor drives
simulated time by waiting, one poll interval at a time.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from vmmove.errors import InvalidInput, NotFound, PrecheckFailed, VMMoveError, WaitTimeout
from vmmove.machine import Phase
from vmmove.model import HostInfo, HostState, MigrationMode, PowerState, VMInfo
from vmmove.placement import (
    Candidate,
    Cost,
    PlacementContext,
    PlacementRegistry,
    best,
    build_context,
    explain,
    groups_of,
    link_of,
    predict,
    working_set,
)
from vmmove.policy import AtIteration, Policy, SetDowntime, resolve

if TYPE_CHECKING:
    from vmmove.engine import Connection, Migration

__all__ = [
    "Attempt",
    "Executor",
    "FleetEvent",
    "Limits",
    "Move",
    "Outcome",
    "Plan",
    "Report",
    "Stay",
    "consolidate",
    "downtime_schedule",
    "evacuate",
    "execute",
    "moves",
    "overcommits",
    "plan_consolidate",
    "plan_evacuate",
    "plan_moves",
    "plan_rebalance",
    "rebalance",
]

GiB = float(1 << 30)


# ---- plans ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Move:
    """One planned migration."""

    vm: str  # VM id
    vm_name: str
    source: str  # host id
    target: str  # host id
    memory: int
    vcpus: int
    mode: MigrationMode  # what AUTO will do: live for a running VM, cold otherwise
    reason: str  # why the VM moves
    placement: str  # why this target
    cost: Cost  # predicted alone on the source's link
    dirty_rate: float = 0.0  # bytes/s the guest writes, as the platform reported it
    source_name: str = ""
    target_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "vm_name": self.vm_name,
            "source": self.source,
            "source_name": self.source_name or self.source,
            "target": self.target,
            "target_name": self.target_name or self.target,
            "memory": self.memory,
            "dirty_rate": self.dirty_rate,
            "vcpus": self.vcpus,
            "mode": self.mode.value,
            "reason": self.reason,
            "placement": self.placement,
            "predicted": _cost_dict(self.cost),
        }


@dataclass(frozen=True, kw_only=True)
class Stay:
    """A VM the plan wanted to move and cannot, with the reason."""

    vm: str
    vm_name: str
    host: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "vm_name": self.vm_name, "host": self.host, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Ordered moves (longest predicted first), what stays and why, what ends empty."""

    kind: Literal["evacuate", "rebalance", "consolidate", "moves"]
    scope: str  # the host evacuated, or the cluster(s)
    moves: tuple[Move, ...] = ()
    stays: tuple[Stay, ...] = ()
    frees: tuple[str, ...] = ()  # host ids the plan sets out to empty (once nothing stays)
    headroom: float = 0.0
    policy: str = "balanced"
    before: Mapping[str, float] = field(default_factory=dict)
    after: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every VM the plan set out to move has a move."""
        return not self.stays

    @property
    def data(self) -> int:
        return sum(m.cost.data for m in self.moves)

    @property
    def predicted_seconds(self) -> float:
        """Lower bound on the run: the busiest source link sending its moves back to back."""
        per_source: dict[str, float] = {}
        for m in self.moves:
            if m.cost.converges:
                per_source[m.source] = per_source.get(m.source, 0.0) + m.cost.seconds
        return max(per_source.values(), default=0.0)

    @property
    def diverging(self) -> list[Move]:
        """Moves predicted not to converge by pre-copy alone even with the whole link: they
        rely on the policy's emergency steps (auto-converge, post-copy) or fail."""
        return [m for m in self.moves if not m.cost.converges]

    def to_dict(self) -> dict[str, Any]:
        seconds = self.predicted_seconds
        return {
            "kind": self.kind,
            "scope": self.scope,
            "policy": self.policy,
            "headroom": self.headroom,
            "moves": [m.to_dict() for m in self.moves],
            "stays": [s.to_dict() for s in self.stays],
            "frees": list(self.frees),
            "predicted_data": self.data,
            "predicted_seconds": seconds,
            "diverging": [m.vm for m in self.diverging],
            "before": dict(self.before),
            "after": dict(self.after),
            "notes": list(self.notes),
        }


def _cost_dict(cost: Cost) -> dict[str, Any]:
    return {
        "seconds": cost.seconds if math.isfinite(cost.seconds) else None,
        "data": cost.data,
        "passes": cost.passes,
        "converges": cost.converges,
        "rate": cost.rate,
        "need": cost.need,
    }


def overcommits(plan: Plan, hosts: Iterable[HostInfo]) -> list[tuple[int, str, int, int]]:
    """Replay ``plan`` against ``hosts``; return ``(step, host id, used, limit)`` for every
    step that puts a host's memory over its capacity less the plan's headroom.

    Each move reserves its memory on the target when it starts, and the replay assumes every
    earlier move is still in flight (no source freed yet): the worst moment of any order or
    concurrency the executor may choose.
    """
    used = {h.id: h.allocated.memory for h in hosts}
    limit = {h.id: _limit(h, plan.headroom) for h in hosts}
    bad: list[tuple[int, str, int, int]] = []
    for step, m in enumerate(plan.moves):
        used[m.target] = used.get(m.target, 0) + m.memory
        if used[m.target] > limit.get(m.target, 0):
            bad.append((step, m.target, used[m.target], limit.get(m.target, 0)))
    return bad


def _limit(host: HostInfo, headroom: float) -> int:
    """Memory a host may hold: what the ``memory`` placement filter allows."""
    return host.capacity.memory - int(host.capacity.memory * headroom)


def downtime_schedule(
    policy: Policy, max_downtime: int | None = None
) -> tuple[tuple[int, float], ...]:
    """(from pass, seconds) as ``policy`` raises the downtime limit pass by pass (only the
    steps triggered by the pass count; emergency steps are not planned on)."""
    cap = max_downtime / 1000 if max_downtime else None
    out = [(1, min(0.3, cap) if cap else 0.3)]
    for step in policy.steps:
        if isinstance(step.trigger, AtIteration) and isinstance(step.action, SetDowntime):
            s = step.action.ms / 1000
            out.append((step.trigger.n, min(s, cap) if cap else s))
    return tuple(sorted(out))


# ---- planning helpers -------------------------------------------------------------------
def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _converges(vm: VMInfo, link: float, schedule: tuple[tuple[int, float], ...]) -> bool:
    return predict(vm, link, downtime=schedule).converges


def _mode(vm: VMInfo) -> MigrationMode:
    return MigrationMode.LIVE if vm.power is PowerState.RUNNING else MigrationMode.COLD


def _immovable(vm: VMInfo) -> str | None:
    if vm.power is PowerState.RUNNING and not vm.live_migratable:
        return f"cannot migrate live: {vm.not_migratable_reason or 'the platform says so'}"
    return None


def _refusals(ranked: Sequence[Candidate]) -> str:
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


def _assign(ctx: PlacementContext, vm: VMInfo, target: str) -> None:
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


def _move(
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


def _longest_first(moves: Iterable[Move]) -> tuple[Move, ...]:
    return tuple(sorted(moves, key=lambda m: (-m.cost.seconds, -m.memory, m.vm_name)))


def _utilisation(
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


def _policy(policy: str | Policy, extra: Iterable[Policy] = ()) -> Policy:
    return resolve(policy, extra)


# ---- evacuate ---------------------------------------------------------------------------
def plan_evacuate(
    host: str,
    hosts: Sequence[HostInfo],
    vms: Sequence[VMInfo],
    *,
    registry: PlacementRegistry | None = None,
    headroom: float = 0.0,
    cpu_ratio: float | None = None,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
) -> Plan:
    """Plan to empty ``host`` (id or name): a target for every VM on it, or why not.

    Targets come from placement (filters and weighers, ``registry``), the planner counting
    its own earlier choices as reservations, so it never overfills a host and spreads the
    moves. VMs are placed largest first; the plan lists the moves longest predicted first.
    """
    src = _find_host(host, hosts)
    pol = policy if isinstance(policy, Policy) else _policy(policy)
    schedule = downtime_schedule(pol, max_downtime)
    registry = registry or PlacementRegistry()
    ctx = build_context(
        hosts,
        vms,
        headroom=headroom,
        avoid={src.id},
        cpu_ratio=cpu_ratio,
        source_cluster=src.cluster,
    )
    others = [h for h in hosts if h.id != src.id]
    link = link_of(src)
    moves: list[Move] = []
    stays: list[Stay] = []
    on_host = [v for v in vms if v.host == src.id]
    # The hardest to place first: grouped VMs, then the largest.
    on_host.sort(key=lambda v: (not any(groups_of(v)), -v.memory, v.name))
    for vm in on_host:
        why = _immovable(vm)
        if why is not None:
            stays.append(Stay(vm=vm.id, vm_name=vm.name, host=src.id, reason=why))
            continue
        try:
            top = best(vm, others, ctx, registry)[0]
        except PrecheckFailed:
            reason = _refusals(explain(vm, others, ctx, registry))
            stays.append(Stay(vm=vm.id, vm_name=vm.name, host=src.id, reason=reason))
            continue
        _assign(ctx, vm, top.host.id)
        moves.append(
            _move(
                vm,
                top.host,
                source_name=src.name,
                reason=f"evacuate {src.name}",
                placement=str(top),
                link=link,
                schedule=schedule,
            )
        )
    pool = list(hosts)
    used = _used_after(pool, moves)
    return Plan(
        kind="evacuate",
        scope=src.name,
        moves=_longest_first(moves),
        stays=tuple(stays),
        frees=(src.id,),
        headroom=headroom,
        policy=pol.name,
        before=_utilisation(pool),
        after=_utilisation(pool, used),
    )


def _find_host(ref: str, hosts: Sequence[HostInfo]) -> HostInfo:
    for h in hosts:
        if h.id == ref:
            return h
    named = [h for h in hosts if h.name == ref]
    if len(named) == 1:
        return named[0]
    raise NotFound(f"no host {ref!r}" if not named else f"host name {ref!r} is ambiguous")


def _used_after(hosts: Sequence[HostInfo], moves: Iterable[Move]) -> dict[str, int]:
    used = {h.id: h.allocated.memory for h in hosts}
    for m in moves:
        used[m.source] = used.get(m.source, 0) - m.memory
        used[m.target] = used.get(m.target, 0) + m.memory
    return used


# ---- rebalance --------------------------------------------------------------------------
def plan_rebalance(
    hosts: Sequence[HostInfo],
    vms: Sequence[VMInfo],
    *,
    cluster: str | None = None,
    threshold: float = 0.10,
    max_moves: int | None = None,
    registry: PlacementRegistry | None = None,
    headroom: float = 0.0,
    cpu_ratio: float | None = None,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
) -> Plan:
    """Plan moves that bring every host's memory use within ``threshold`` of its cluster's
    mean (as Watcher's workload balance and DRS do), cheapest moves first.

    The most loaded host gives first: the VM whose memory best matches its excess (ties: the
    cheaper to move), to the best-ranked host that stays under the line after taking it. A
    host gives or takes, never both, so no move waits on another. Moves stay in the cluster.
    """
    pol = policy if isinstance(policy, Policy) else _policy(policy)
    schedule = downtime_schedule(pol, max_downtime)
    registry = registry or PlacementRegistry()
    clusters = sorted({h.cluster for h in hosts} if cluster is None else {cluster})
    moves: list[Move] = []
    notes: list[str] = []
    by_host: dict[str, list[VMInfo]] = {}
    for vm in vms:
        by_host.setdefault(vm.host, []).append(vm)
    for c in clusters:
        pool = [h for h in hosts if h.cluster == c and h.state is HostState.UP]
        if len(pool) < 2:
            continue
        ctx = build_context(hosts, vms, headroom=headroom, cpu_ratio=cpu_ratio, source_cluster=c)
        used = {h.id: h.allocated.memory for h in pool}
        cap = {h.id: h.capacity.memory for h in pool}
        mean = sum(used.values()) / max(sum(cap.values()), 1)
        line = mean + threshold
        role: dict[str, str] = {}
        stuck: set[str] = set()
        while max_moves is None or len(moves) < max_moves:
            over = [
                h
                for h in pool
                if role.get(h.id) != "take"
                and h.id not in stuck
                and used[h.id] / cap[h.id] > line + 1e-12
            ]
            if not over:
                break
            h = max(over, key=lambda x: (used[x.id] / cap[x.id], x.name))
            excess = used[h.id] - mean * cap[h.id]
            cands = [
                v
                for v in by_host.get(h.id, [])
                if _immovable(v) is None
                and not groups_of(v)[0]
                and v.memory <= 2 * excess
                and _converges(v, link_of(h), schedule)
            ]
            link = link_of(h)
            cands.sort(
                key=lambda v: (
                    abs(excess - v.memory) // (256 << 20),
                    predict(v, link, downtime=schedule).seconds,
                    v.name,
                )
            )
            done = False
            for vm in cands[:8]:
                util_h = (used[h.id] - vm.memory) / cap[h.id]
                receivers = [
                    t
                    for t in pool
                    if t.id != h.id
                    and role.get(t.id) != "give"
                    and (used[t.id] + vm.memory) / cap[t.id] <= line
                    and (used[t.id] + vm.memory) / cap[t.id] < used[h.id] / cap[h.id]
                ]
                if not receivers:
                    continue
                try:
                    top = best(vm, receivers, ctx, registry)[0]
                except PrecheckFailed:
                    continue
                _assign(ctx, vm, top.host.id)
                by_host[h.id].remove(vm)
                used[h.id] -= vm.memory
                used[top.host.id] += vm.memory
                role[h.id], role[top.host.id] = "give", "take"
                moves.append(
                    _move(
                        vm,
                        top.host,
                        source_name=h.name,
                        reason=(
                            f"{h.name} uses {(used[h.id] + vm.memory) / cap[h.id]:.0%} of its "
                            f"memory, cluster {c or '-'} mean {mean:.0%} (+{threshold:.0%} "
                            f"allowed): {util_h:.0%} after"
                        ),
                        placement=str(top),
                        link=link,
                        schedule=schedule,
                    )
                )
                done = True
                break
            if not done:
                stuck.add(h.id)
                notes.append(f"{h.name} stays above the line: no VM on it fits another host")
    pool_all = [h for h in hosts if (cluster is None or h.cluster == cluster)]
    return Plan(
        kind="rebalance",
        scope=cluster or "all clusters",
        moves=_longest_first(moves),
        headroom=headroom,
        policy=pol.name,
        before=_utilisation(pool_all),
        after=_utilisation(pool_all, _used_after(pool_all, moves)),
        notes=tuple(notes),
    )


# ---- consolidate ------------------------------------------------------------------------
def plan_consolidate(
    hosts: Sequence[HostInfo],
    vms: Sequence[VMInfo],
    *,
    cluster: str | None = None,
    registry: PlacementRegistry | None = None,
    headroom: float = 0.0,
    cpu_ratio: float | None = None,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
) -> Plan:
    """Plan which hosts can be emptied (to power them off) and the moves that empty them.

    Per cluster: keep the fullest hosts (and any holding a VM that cannot move), fewest
    first from the lower bound ``ceil(demand / capacity)``; pack the VMs of the others into
    the room left on the kept hosts, largest VM first into the tightest host that passes
    every placement filter (best fit decreasing); if they do not all fit, keep one more
    host and try again. Keeping the fullest hosts moves the least memory.
    """
    pol = policy if isinstance(policy, Policy) else _policy(policy)
    schedule = downtime_schedule(pol, max_downtime)
    registry = registry or PlacementRegistry()
    clusters = sorted({h.cluster for h in hosts} if cluster is None else {cluster})
    by_host: dict[str, list[VMInfo]] = {}
    for vm in vms:
        by_host.setdefault(vm.host, []).append(vm)
    moves: list[Move] = []
    frees: list[str] = []
    notes: list[str] = []
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    lower_total = 0
    for c in clusters:
        pool = [h for h in hosts if h.cluster == c and h.state is HostState.UP]
        if not pool:
            continue
        usable = {h.id: _limit(h, headroom) for h in pool}
        used = {h.id: h.allocated.memory for h in pool}
        demand = sum(used.values())
        caps = sorted(usable.values(), reverse=True)
        lower, room = 0, 0
        while room < demand and lower < len(caps):
            room += caps[lower]
            lower += 1
        lower_total += lower
        stuck_vms = [
            v
            for h in pool
            for v in by_host.get(h.id, [])
            if _immovable(v) is not None or not _converges(v, link_of(h), schedule)
        ]
        pinned = {v.host for v in stuck_vms}
        if stuck_vms:
            listed = ", ".join(v.name for v in stuck_vms[:5])
            listed += ", ..." if len(stuck_vms) > 5 else ""
            notes.append(
                f"cluster {c or '-'}: {len(stuck_vms)} VM{_s(len(stuck_vms))} cannot move live "
                f"or would not converge on its host's link, so its host stays: {listed}"
            )
        order = sorted(
            pool,
            key=lambda h: (h.id not in pinned, -used[h.id], -h.capacity.memory, h.name),
        )
        occupied = sum(1 for h in pool if used[h.id] > 0)
        k = max(lower, len(pinned), 1)
        result: tuple[list[tuple[VMInfo, HostInfo]], list[HostInfo]] | None = None
        while k < occupied:
            kept, freed = order[:k], [h for h in order[k:] if used[h.id] > 0]
            result = _pack(
                kept,
                freed,
                by_host=by_host,
                usable=usable,
                used=used,
                hosts=hosts,
                vms=vms,
                headroom=headroom,
                cpu_ratio=cpu_ratio,
                registry=registry,
                cluster=c,
            )
            if result is not None:
                break
            k += 1
        if result is None:
            notes.append(
                f"cluster {c or '-'}: no host can be emptied "
                f"({occupied} host{_s(occupied)} with VMs, at least {lower} needed)"
            )
            before[f"{c}:hosts_used"] = after[f"{c}:hosts_used"] = float(occupied)
            continue
        placed, freed = result
        frees.extend(h.id for h in freed)
        freed_by_id = {h.id: h for h in freed}
        left = {h.id: usable[h.id] - used[h.id] for h in pool}
        for vm, target in placed:
            src = freed_by_id[vm.host]
            left[target.id] -= vm.memory
            spare = max(left[target.id], 0) / GiB
            moves.append(
                _move(
                    vm,
                    target,
                    source_name=src.name,
                    reason=f"empty {src.name} to power it off",
                    placement=f"{target.name}: best fit, {spare:.1f} GiB left",
                    link=link_of(src),
                    schedule=schedule,
                )
            )
        before[f"{c}:hosts_used"] = float(occupied)
        after[f"{c}:hosts_used"] = float(occupied - len(freed))
        before[f"{c}:lower_bound"] = after[f"{c}:lower_bound"] = float(lower)
    pool_all = [h for h in hosts if (cluster is None or h.cluster == cluster)]
    figures_before = {**_utilisation(pool_all), **before}
    figures_after = {**_utilisation(pool_all, _used_after(pool_all, moves)), **after}
    figures_before["lower_bound"] = figures_after["lower_bound"] = float(lower_total)
    return Plan(
        kind="consolidate",
        scope=cluster or "all clusters",
        moves=_longest_first(moves),
        frees=tuple(frees),
        headroom=headroom,
        policy=pol.name,
        before=figures_before,
        after=figures_after,
        notes=tuple(notes),
    )


def _pack(
    kept: list[HostInfo],
    freed: list[HostInfo],
    *,
    by_host: Mapping[str, list[VMInfo]],
    usable: Mapping[str, int],
    used: dict[str, int],
    hosts: Sequence[HostInfo],
    vms: Sequence[VMInfo],
    headroom: float,
    cpu_ratio: float | None,
    registry: PlacementRegistry,
    cluster: str,
) -> tuple[list[tuple[VMInfo, HostInfo]], list[HostInfo]] | None:
    """Best fit decreasing of the freed hosts' VMs into the kept hosts, every filter checked."""
    ctx = build_context(
        hosts,
        vms,
        headroom=headroom,
        avoid={h.id for h in freed},
        cpu_ratio=cpu_ratio,
        source_cluster=cluster,
    )
    free = {h.id: usable[h.id] - used[h.id] for h in kept}
    by_id = {h.id: h for h in kept}
    keys = sorted((f, h) for h, f in free.items())
    evacuees = sorted(
        (v for h in freed for v in by_host.get(h.id, [])), key=lambda v: (-v.memory, v.name)
    )
    filters = list(registry.filters.values())
    placed: list[tuple[VMInfo, HostInfo]] = []
    for vm in evacuees:
        i = bisect.bisect_left(keys, (vm.memory, ""))
        chosen = None
        for j in range(i, len(keys)):
            host = by_id[keys[j][1]]
            if all(f(vm, host, ctx) is None for f in filters):
                chosen = j
                break
        if chosen is None:
            return None
        f, hid = keys.pop(chosen)
        bisect.insort(keys, (f - vm.memory, hid))
        _assign(ctx, vm, hid)
        placed.append((vm, by_id[hid]))
    return placed, freed


# ---- explicit moves ---------------------------------------------------------------------
def plan_moves(
    pairs: Mapping[str, str],
    hosts: Sequence[HostInfo],
    vms: Sequence[VMInfo],
    *,
    registry: PlacementRegistry | None = None,
    headroom: float = 0.0,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
    reason: str = "asked for",
) -> Plan:
    """A plan of moves you name (VM id or name -> host id or name), checked by placement as
    one batch: a pair the filters refuse, counting the pairs before it, stays with why."""
    pol = policy if isinstance(policy, Policy) else _policy(policy)
    schedule = downtime_schedule(pol, max_downtime)
    registry = registry or PlacementRegistry()
    ctx = build_context(hosts, vms, headroom=headroom)
    by_ref = {v.id: v for v in vms}
    by_name = {v.name: v for v in vms}
    host_by_id = {h.id: h for h in hosts}
    moves: list[Move] = []
    stays: list[Stay] = []
    for vm_ref, host_ref in pairs.items():
        vm = by_ref.get(vm_ref) or by_name.get(vm_ref)
        if vm is None:
            raise NotFound(f"no VM {vm_ref!r}")
        target = _find_host(host_ref, hosts)
        why = _immovable(vm)
        if why is None:
            verdict = explain(vm, [target], ctx, registry)[0]
            why = f"{target.name}: {'; '.join(verdict.rejected)}" if verdict.rejected else None
        if why is not None:
            stays.append(Stay(vm=vm.id, vm_name=vm.name, host=vm.host, reason=why))
            continue
        _assign(ctx, vm, target.id)
        src = host_by_id.get(vm.host)
        moves.append(
            _move(
                vm,
                target,
                source_name=src.name if src else vm.host,
                reason=reason,
                placement=f"{target.name}: named",
                link=link_of(src),
                schedule=schedule,
            )
        )
    return Plan(
        kind="moves",
        scope=f"{len(pairs)} VM{_s(len(pairs))}",
        moves=_longest_first(moves),
        stays=tuple(stays),
        headroom=headroom,
        policy=pol.name,
    )


# ---- the planners on a connection -------------------------------------------------------
def evacuate(
    conn: Connection,
    host: str,
    *,
    headroom: float = 0.0,
    cpu_ratio: float | None = None,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
) -> Plan:
    """Plan to empty ``host`` on ``conn``'s estate, with its plugins' placement rules."""
    conn.host(host)  # NotFound now
    return plan_evacuate(
        host,
        conn.hosts(),
        conn.vms(),
        registry=conn.plugins.placement,
        headroom=headroom,
        cpu_ratio=cpu_ratio,
        policy=_policy(policy, conn.plugins.policies),
        max_downtime=max_downtime,
    )


def rebalance(
    conn: Connection,
    cluster: str | None = None,
    *,
    threshold: float = 0.10,
    max_moves: int | None = None,
    headroom: float = 0.0,
    cpu_ratio: float | None = None,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
) -> Plan:
    """Plan to bring each host of ``cluster`` (every cluster if ``None``) within
    ``threshold`` of the cluster's mean memory use."""
    hosts = conn.hosts()
    _check_cluster(cluster, hosts)
    return plan_rebalance(
        hosts,
        conn.vms(),
        cluster=cluster,
        threshold=threshold,
        max_moves=max_moves,
        registry=conn.plugins.placement,
        headroom=headroom,
        cpu_ratio=cpu_ratio,
        policy=_policy(policy, conn.plugins.policies),
        max_downtime=max_downtime,
    )


def consolidate(
    conn: Connection,
    cluster: str | None = None,
    *,
    headroom: float = 0.0,
    cpu_ratio: float | None = None,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
) -> Plan:
    """Plan which hosts of ``cluster`` (every cluster if ``None``) can be emptied, and how."""
    hosts = conn.hosts()
    _check_cluster(cluster, hosts)
    return plan_consolidate(
        hosts,
        conn.vms(),
        cluster=cluster,
        registry=conn.plugins.placement,
        headroom=headroom,
        cpu_ratio=cpu_ratio,
        policy=_policy(policy, conn.plugins.policies),
        max_downtime=max_downtime,
    )


def moves(
    conn: Connection,
    pairs: Mapping[str, str],
    *,
    headroom: float = 0.0,
    policy: str | Policy = "balanced",
    max_downtime: int | None = None,
) -> Plan:
    """Plan the moves you name (VM -> host) on ``conn``'s estate, checked by placement."""
    return plan_moves(
        pairs,
        conn.hosts(),
        conn.vms(),
        registry=conn.plugins.placement,
        headroom=headroom,
        policy=_policy(policy, conn.plugins.policies),
        max_downtime=max_downtime,
    )


def _check_cluster(cluster: str | None, hosts: Sequence[HostInfo]) -> None:
    if cluster is not None and all(h.cluster != cluster for h in hosts):
        known = ", ".join(sorted({h.cluster for h in hosts})) or "none"
        raise NotFound(f"no cluster {cluster!r} (known: {known})")


# ---- execution --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Limits:
    """Moves in flight at once. ``None``: no limit.

    Defaults follow KubeVirt and VDSM: 2 out of each host, 2 into each, 5 per cluster.
    """

    per_source: int | None = 2
    per_target: int | None = 2
    per_cluster: int | None = 5
    total: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_source", "per_target", "per_cluster", "total"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise InvalidInput(f"limit {name} must be at least 1, not {value!r}")


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One migration the executor started for a move."""

    migration: str  # record id ("" if migrate() refused at once)
    target: str
    started_at: float  # the record's created_at (clock.time())
    ended_at: float  # its terminal transition
    phase: Phase
    vm_host: str | None
    error: str | None = None
    error_type: str | None = None
    alone: bool = False  # ran with its source link to itself

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "target": self.target,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "phase": self.phase.value,
            "vm_host": self.vm_host,
            "error": self.error,
            "error_type": self.error_type,
            "alone": self.alone,
        }


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """Where a VM ended and why."""

    vm: str
    vm_name: str
    source: str
    host: str | None  # where it runs now; None: no host runs it (failed in post-copy)
    status: Literal["moved", "stayed", "lost"]
    reason: str = ""
    memory: int = 0
    attempts: tuple[Attempt, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "vm_name": self.vm_name,
            "source": self.source,
            "host": self.host,
            "status": self.status,
            "reason": self.reason,
            "memory": self.memory,
            "attempts": [a.to_dict() for a in self.attempts],
        }


@dataclass(frozen=True, kw_only=True)
class Report:
    """What a run of a plan did."""

    plan: Plan
    limits: Limits
    outcomes: tuple[Outcome, ...]
    started_at: float
    ended_at: float
    left_behind: tuple[Stay, ...] = ()  # for an evacuation: VMs still on the host at the end

    @property
    def makespan(self) -> float:
        return self.ended_at - self.started_at

    @property
    def moved(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "moved"]

    @property
    def stayed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "moved"]

    @property
    def aborted(self) -> int:
        """Attempts that ran and failed or were cancelled (refusals at start excluded)."""
        return sum(
            1
            for o in self.outcomes
            for a in o.attempts
            if a.phase is not Phase.COMPLETED and a.migration and a.error_type != "PrecheckFailed"
        )

    @property
    def ok(self) -> bool:
        return all(o.status == "moved" for o in self.outcomes) and not self.left_behind

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.plan.kind,
            "scope": self.plan.scope,
            "ok": self.ok,
            "makespan": self.makespan,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "limits": {
                "per_source": self.limits.per_source,
                "per_target": self.limits.per_target,
                "per_cluster": self.limits.per_cluster,
                "total": self.limits.total,
            },
            "moved": len(self.moved),
            "stayed": len(self.stayed),
            "outcomes": [o.to_dict() for o in self.outcomes],
            "left_behind": [s.to_dict() for s in self.left_behind],
        }


@dataclass(frozen=True, kw_only=True)
class FleetEvent:
    """What the executor tells its observer: a move started, ended, will be retried, or a
    tick passed (``kind="tick"``: read :attr:`Executor.running` for progress)."""

    kind: Literal["start", "end", "retry", "skip", "tick"]
    vm_name: str = ""
    source: str = ""
    target: str = ""
    attempt: int = 0
    migration: Migration | None = None
    message: str = ""


_CONSUMING = frozenset(
    {Phase.PENDING, Phase.PREPARING, Phase.REQUESTING, Phase.TRANSFERRING, Phase.POSTCOPY}
)


class _Task:
    __slots__ = (
        "alone",
        "attempts",
        "k",
        "migration",
        "move",
        "priority",
        "robust",
        "target",
        "tried",
        "working_set",
    )

    def __init__(self, move: Move) -> None:
        self.move = move
        self.target = move.target
        self.attempts: list[Attempt] = []
        self.tried: set[str] = set()
        self.migration: Migration | None = None
        self.k = 1  # how many moves may share the source link with this one
        self.alone = False
        self.priority = move.cost.seconds
        self.working_set = move.memory
        self.robust = False  # still converges if a move overlaps it for a while


class Executor:
    """Runs a :class:`Plan` on a connection within :class:`Limits`; see :func:`execute`.

    ``order``: ``"longest-first"`` (default) or ``"plan"`` (as listed: a first-in-first-out
    drain). ``link_aware``: schedule with the source links in mind (see the module doc);
    ``False`` starts whatever the limits allow. ``share_tolerance``: how much more data a
    move may send because it shares its link (0.03: 3 %). ``max_attempts``: per VM.
    ``migrate_options`` go to every ``conn.migrate`` (``max_downtime``, ``bandwidth``...).
    """

    def __init__(
        self,
        conn: Connection,
        plan: Plan,
        limits: Limits | None = None,
        *,
        policy: str | Policy | None = None,
        order: Literal["longest-first", "plan"] = "longest-first",
        link_aware: bool = True,
        share_tolerance: float = 0.03,
        max_attempts: int = 3,
        observer: Callable[[FleetEvent], None] | None = None,
        migrate_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.conn = conn
        self.plan = plan
        self.limits = limits or Limits()
        self.policy = _policy(policy or plan.policy, conn.plugins.policies)
        self.order = order
        self.link_aware = link_aware
        self.share_tolerance = share_tolerance
        self.max_attempts = max(1, max_attempts)
        self.observer = observer
        self.options = dict(migrate_options or {})
        self._schedule = downtime_schedule(self.policy, self.options.get("max_downtime"))
        self._stop = False
        self._cancel_running = False
        self.running: list[tuple[Move, Migration]] = []

    # ---- control ------------------------------------------------------------------------
    def stop(self, *, cancel_running: bool = False) -> None:
        """Start nothing more; with ``cancel_running`` also cancel what runs (before the
        commit point). The report lists the rest as stayed: "stopped"."""
        self._stop = True
        self._cancel_running = self._cancel_running or cancel_running

    @property
    def stopping(self) -> bool:
        return self._stop

    def _emit(self, event: FleetEvent) -> None:
        if self.observer is not None:
            self.observer(event)

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> Report:
        conn = self.conn
        clock = conn.clock
        t0 = clock.time()
        hosts = {h.id: h for h in conn.hosts()}
        self._hosts = hosts
        self._used = {hid: h.allocated.memory for hid, h in hosts.items()}
        self._vms = {v.id: v for v in conn.vms()}
        self._limit = {hid: _limit(h, self.plan.headroom) for hid, h in hosts.items()}
        self._link = {hid: link_of(h) for hid, h in hosts.items()}
        self._out: dict[str, int] = {}
        self._in: dict[str, int] = {}
        self._inflight_mem: dict[str, int] = {}
        self._cluster: dict[str, int] = {}
        self._active: list[_Task] = []
        self._setup_times: deque[float] = deque(maxlen=50)
        self._setup: float | None = None
        tick = float(getattr(conn.backend, "poll_interval", 1.0))
        self._tick = tick
        outcomes: dict[str, Outcome] = {}
        for stay in self.plan.stays:
            outcomes[stay.vm] = Outcome(
                vm=stay.vm,
                vm_name=stay.vm_name,
                source=stay.host,
                host=stay.host,
                status="stayed",
                reason=stay.reason,
            )
        queues: dict[str, deque[_Task]] = {}
        tasks = [_Task(m) for m in self.plan.moves]
        if self.order == "longest-first":
            tasks.sort(key=lambda t: (-t.priority, -t.move.memory, t.move.vm_name))
        self._queues = queues
        self._outcomes = outcomes
        for t in tasks:
            now = self._vms.get(t.move.vm)
            if now is None or now.host != t.move.source:
                where = "is gone" if now is None else f"runs on {now.host} now"
                self._settle(
                    t, f"the plan is stale: {where}", now.host if now is not None else None
                )
                continue
            t.k = self._shareable(t)
            queues.setdefault(t.move.source, deque()).append(t)
        while True:
            if self._stop and self._cancel_running:
                for task in self._active:
                    if task.migration is not None:
                        task.migration.cancel()
            if not self._stop:
                self._admit()
            if not self._active:
                if self._stop or not any(queues.values()):
                    break
                self._stuck()
                continue
            self._wait()
            self._reap()
            self._emit(FleetEvent(kind="tick"))
        for q in queues.values():
            for task in q:
                why = "stopped before it started" if self._stop else "never admitted"
                self._settle(task, why)
        t1 = clock.time()
        ordered = [outcomes[m.vm] for m in self.plan.moves if m.vm in outcomes]
        ordered += [outcomes[s.vm] for s in self.plan.stays if s.vm in outcomes]
        left = self._left_behind(outcomes)
        return Report(
            plan=self.plan,
            limits=self.limits,
            outcomes=tuple(ordered),
            started_at=t0,
            ended_at=t1,
            left_behind=left,
        )

    def _left_behind(self, outcomes: Mapping[str, Outcome]) -> tuple[Stay, ...]:
        """Every VM still on a host the plan set out to empty, with the reason the run knows."""
        if not self.plan.frees:
            return ()
        empty = set(self.plan.frees)
        out = []
        for vm in self.conn.vms():
            if vm.host not in empty:
                continue
            known = outcomes.get(vm.id)
            reason = known.reason if known is not None else "arrived while the plan ran"
            out.append(Stay(vm=vm.id, vm_name=vm.name, host=vm.host, reason=reason))
        return tuple(out)

    # ---- scheduling ---------------------------------------------------------------------
    def _shareable(self, task: _Task) -> int:
        """How many moves (this one included) may share the source link before this one
        sends ``share_tolerance`` more data, or stops converging."""
        if not self.link_aware or task.alone:
            return 1 if task.alone else 1 << 30
        vm = self._vm_info(task.move)
        task.working_set = working_set(vm)
        link = self._link.get(task.move.source, link_of(None))
        top = self.limits.per_source or 8
        alone = predict(vm, link, downtime=self._schedule)
        task.robust = predict(vm, link / 2, downtime=self._schedule).converges
        k = 1
        for n in range(2, top + 1):
            shared = predict(vm, link / n, downtime=self._schedule)
            if not shared.converges or shared.data > alone.data * (1 + self.share_tolerance):
                break
            k = n
        return k

    def _vm_info(self, move: Move) -> VMInfo:
        vm = self._vms.get(move.vm)
        if vm is not None:
            return vm
        return VMInfo(
            id=move.vm,
            name=move.vm_name,
            host=move.source,
            power=PowerState.RUNNING,
            memory=move.memory,
            vcpus=move.vcpus,
        )

    def _slots_ok(self, source: str, target: str) -> bool:
        lim = self.limits
        if lim.total is not None and len(self._active) >= lim.total:
            return False
        if lim.per_source is not None and self._out.get(source, 0) >= lim.per_source:
            return False
        if lim.per_target is not None and self._in.get(target, 0) >= lim.per_target:
            return False
        if lim.per_cluster is not None:
            for key in self._clusters(source, target):
                if self._cluster.get(key, 0) >= lim.per_cluster:
                    return False
        return True

    def _source_full(self, source: str) -> bool:
        lim = self.limits
        return (lim.total is not None and len(self._active) >= lim.total) or (
            lim.per_source is not None and self._out.get(source, 0) >= lim.per_source
        )

    def _clusters(self, source: str, target: str) -> tuple[str, ...]:
        a = self._hosts[source].cluster if source in self._hosts else ""
        b = self._hosts[target].cluster if target in self._hosts else ""
        return (a,) if a == b else (a, b)

    def _room(self, task: _Task, target: str) -> bool:
        """The target holds the VM on top of its VMs and every reservation in flight (the
        executor's own ledger), and the engine's pre-check will agree."""
        mem = task.move.memory
        used = self._used.get(target, 0)
        if used + mem > self._limit.get(target, 0):
            return False
        if not self.conn.capabilities.reserve:
            return True
        # Workaround: on a backend that reserves (the simulator), the engine subtracts its
        # claims for moves in flight from a free figure that already holds their
        # reservations. A move to a host filling up waits for the moves in flight to it
        # rather than be refused (docs/fleet.md, "Core changes wanted").
        capacity = self._hosts[target].capacity.memory if target in self._hosts else 0
        return used + self._inflight_mem.get(target, 0) + mem <= capacity

    def _link_ok(self, task: _Task) -> bool:
        if not self.link_aware:
            return True
        consuming = [t for t in self._active if t.move.source == task.move.source and _busy(t)]
        consuming = [t for t in consuming if not self._near_end(t)]
        n = len(consuming) + 1
        return n <= task.k and all(n <= t.k for t in consuming)

    def _near_end(self, task: _Task) -> bool:
        """A transfer that should end before a move started now leaves its set-up."""
        m = task.migration
        if m is None or not task.robust:
            return False  # a move that cannot converge on half its link is never overlapped
        p = m.progress
        if p.phase is not Phase.TRANSFERRING or not p.transfer_rate or p.data_remaining is None:
            return False
        backlog = float(p.data_remaining)
        dirty = p.dirty_rate or 0.0
        iteration = p.iteration or 1
        if iteration <= 1 and dirty > 0:
            # Pass 1 reports what is left of it, not what the guest dirtied meanwhile.
            since = next((t.at for t in m.record.history if t.phase is Phase.TRANSFERRING), None)
            elapsed = self.conn.clock.time() - since if since is not None else 0.0
            backlog += min(float(task.working_set), dirty * elapsed)
        limit = max((s for n, s in self._schedule if n <= iteration + 1), default=0.3)
        return _time_left(backlog, p.transfer_rate, dirty, limit) <= self._lead()

    def _lead(self) -> float:
        """How long a move takes from ``migrate()`` to its first byte (median of the last
        50 seen; two polls until one is seen)."""
        return self._setup if self._setup is not None else 2 * self._tick

    def _admit(self) -> None:
        sources = [s for s, q in self._queues.items() if q]
        sources.sort(key=lambda s: -self._queues[s][0].priority)
        for source in sources:
            queue = self._queues[source]
            while queue:
                started = False
                for i, task in enumerate(itertools.islice(queue, 32)):
                    if not self._slots_ok(source, task.target):
                        if self._source_full(source):
                            break
                        continue
                    if not self._link_ok(task):
                        break  # head of line: lighter moves must not starve a heavy one
                    if not self._room(task, task.target):
                        continue
                    del queue[i]
                    self._start(task)
                    started = True
                    break
                if not started:
                    break

    def _start(self, task: _Task) -> None:
        move = task.move
        target = task.target
        opts = dict(self.options)
        opts.setdefault("policy", self.policy)
        attempt_no = len(task.attempts) + 1
        try:
            m = self.conn.migrate(move.vm, to=target, **opts)
        except VMMoveError as exc:
            now = self.conn.clock.time()
            task.attempts.append(
                Attempt(
                    migration="",
                    target=target,
                    started_at=now,
                    ended_at=now,
                    phase=Phase.FAILED,
                    vm_host=move.source,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
            )
            self._settle(task, f"refused at once: {exc}")
            return
        task.migration = m
        self._active.append(task)
        self._out[move.source] = self._out.get(move.source, 0) + 1
        self._in[target] = self._in.get(target, 0) + 1
        for key in self._clusters(move.source, target):
            self._cluster[key] = self._cluster.get(key, 0) + 1
        self._used[target] = self._used.get(target, 0) + move.memory
        self._inflight_mem[target] = self._inflight_mem.get(target, 0) + move.memory
        self.running.append((move, m))
        self._emit(
            FleetEvent(
                kind="start",
                vm_name=move.vm_name,
                source=move.source,
                target=target,
                attempt=attempt_no,
                migration=m,
            )
        )

    def _wait(self) -> None:
        """Let one poll interval pass (on a virtual clock: drive it), or less if the move
        expected to end first ends sooner."""
        first = min(
            self._active,
            key=lambda t: (
                t.migration.progress.eta
                if t.migration is not None and t.migration.progress.eta is not None
                else math.inf
            ),
        )
        assert first.migration is not None
        try:
            first.migration.wait(timeout=self._tick)
        except WaitTimeout:
            pass
        except VMMoveError:
            pass  # its outcome is read from the record below

    def _reap(self) -> None:
        still: list[_Task] = []
        for task in self._active:
            m = task.migration
            assert m is not None
            if not m.done:
                still.append(task)
                continue
            self._release(task)
            self._finish(task, m)
        self._active = still
        self.running = [(t.move, t.migration) for t in still if t.migration is not None]

    def _release(self, task: _Task) -> None:
        move, target = task.move, task.target
        self._out[move.source] -= 1
        self._in[target] -= 1
        for key in self._clusters(move.source, target):
            self._cluster[key] -= 1
        self._inflight_mem[target] -= move.memory

    def _finish(self, task: _Task, m: Migration) -> None:
        rec = m.record
        move = task.move
        started = rec.created_at
        ended = rec.history[-1].at if rec.history else rec.updated_at
        for t in rec.history:
            if t.phase is Phase.TRANSFERRING:
                self._setup_times.append(t.at - started)
                self._setup = statistics.median(self._setup_times)
                break
        task.attempts.append(
            Attempt(
                migration=rec.id,
                target=task.target,
                started_at=started,
                ended_at=ended,
                phase=rec.phase,
                vm_host=rec.vm_host,
                error=rec.error,
                error_type=rec.error_type,
                alone=task.alone,
            )
        )
        if rec.phase is Phase.COMPLETED:
            self._used[move.source] = self._used.get(move.source, 0) - move.memory
            self._emit(
                FleetEvent(
                    kind="end",
                    vm_name=move.vm_name,
                    source=move.source,
                    target=task.target,
                    migration=m,
                    message="completed",
                )
            )
            self._outcomes[move.vm] = Outcome(
                vm=move.vm,
                vm_name=move.vm_name,
                source=move.source,
                host=rec.vm_host,
                status="moved",
                reason=move.reason,
                memory=move.memory,
                attempts=tuple(task.attempts),
            )
            return
        self._used[task.target] = self._used.get(task.target, 0) - move.memory
        if rec.vm_host is not None and rec.vm_host != move.source:
            # Failed past the commit point, yet the VM runs elsewhere: count it there.
            self._used[move.source] -= move.memory
            self._used[rec.vm_host] = self._used.get(rec.vm_host, 0) + move.memory
        error = rec.error or rec.phase.value
        self._emit(
            FleetEvent(
                kind="end",
                vm_name=move.vm_name,
                source=move.source,
                target=task.target,
                migration=m,
                message=error,
            )
        )
        if rec.vm_host is None:
            self._outcomes[move.vm] = Outcome(
                vm=move.vm,
                vm_name=move.vm_name,
                source=move.source,
                host=None,
                status="lost",
                reason=f"no host runs it: {error}",
                memory=move.memory,
                attempts=tuple(task.attempts),
            )
            return
        if rec.phase is Phase.CANCELLED or self._stop:
            self._settle(task, f"cancelled: {error}" if rec.phase is Phase.CANCELLED else error)
            return
        if rec.vm_host != move.source:
            self._settle(task, error)
            return
        self._retry(task, error, rec.error_type)

    def _retry(self, task: _Task, error: str, error_type: str | None) -> None:
        if len(task.attempts) >= self.max_attempts:
            self._settle(task, f"{error} (after {len(task.attempts)} attempts)")
            return
        task.tried.add(task.target)
        if error_type == "MigrationTimedOut" and self.link_aware:
            task.alone = True  # could not converge sharing the link: give it the whole link
            task.k = 1
        target = self._retarget(task)
        if target is None:
            n = len(task.attempts)
            self._settle(task, f"{error} (after {n} attempt{_s(n)}); no other host can take it")
            return
        self._emit(
            FleetEvent(
                kind="retry",
                vm_name=task.move.vm_name,
                source=task.move.source,
                target=target.id,
                attempt=len(task.attempts) + 1,
                message=error,
            )
        )
        task.target = target.id
        task.move = replace(
            task.move, target=target.id, placement=f"retry after: {error}; {target.name}"
        )
        self._queues.setdefault(task.move.source, deque()).appendleft(task)

    def _retarget(self, task: _Task) -> HostInfo | None:
        try:
            vm = self.conn.vm(task.move.vm)
            hosts = self.conn.hosts()
        except VMMoveError:
            return None
        avoid = set(self.plan.frees) | {task.move.source}
        ctx = build_context(hosts, self.conn.vms(), headroom=self.plan.headroom, avoid=avoid)
        reserved: dict[str, int] = ctx.reserved_memory  # type: ignore[assignment]
        inflight: dict[str, int] = ctx.inflight  # type: ignore[assignment]
        for t in self._active:
            reserved[t.target] = reserved.get(t.target, 0) + t.move.memory
            inflight[t.target] = inflight.get(t.target, 0) + 1
        for q in self._queues.values():
            for t in q:  # planned moves not started yet keep their room
                reserved[t.target] = reserved.get(t.target, 0) + t.move.memory
        candidates = [h for h in hosts if h.id not in task.tried]
        try:
            ranked = best(vm, candidates, ctx, self.conn.plugins.placement)
        except PrecheckFailed:
            return None
        for c in ranked:
            if self._used.get(c.host.id, 0) + task.move.memory <= self._limit.get(c.host.id, 0):
                return c.host
        return None

    def _stuck(self) -> None:
        """Nothing runs and nothing could start: re-place the head of each queue once, then
        report whatever still cannot start."""
        progressed = False
        for source, queue in self._queues.items():
            for task in list(queue):
                if task.target in task.tried:
                    continue
                task.tried.add(task.target)
                target = self._retarget(task)
                if target is not None and self._slots_ok(source, target.id):
                    task.target = target.id
                    task.move = replace(task.move, target=target.id)
                    progressed = True
        if progressed:
            self._admit()
            if self._active:
                return
        for queue in self._queues.values():
            while queue:
                task = queue.popleft()
                why = "no room on its target, nor on any other host, for the moves in flight"
                self._settle(task, why)

    def _settle(self, task: _Task, reason: str, host: str | None = None) -> None:
        move = task.move
        host = host or move.source
        if task.attempts and task.attempts[-1].vm_host is not None:
            host = task.attempts[-1].vm_host
        self._outcomes[move.vm] = Outcome(
            vm=move.vm,
            vm_name=move.vm_name,
            source=move.source,
            host=host,
            status="stayed",
            reason=reason,
            memory=move.memory,
            attempts=tuple(task.attempts),
        )
        self._emit(
            FleetEvent(
                kind="skip",
                vm_name=move.vm_name,
                source=move.source,
                target=task.target,
                message=reason,
            )
        )


def _time_left(remaining: float, rate: float, dirty: float, downtime: float) -> float:
    """Seconds of pre-copy left: the backlog falls at ``rate - dirty`` until the rest fits
    in the pause; a guest dirtying as fast as it is sent does not end by itself."""
    if remaining <= rate * downtime:
        return 0.0
    if dirty >= rate:
        return math.inf
    return (remaining - rate * downtime) / (rate - dirty)


def _busy(task: _Task) -> bool:
    m = task.migration
    return m is not None and m.record.phase in _CONSUMING


def execute(
    conn: Connection,
    plan: Plan,
    limits: Limits | None = None,
    **options: Any,
) -> Report:
    """Run ``plan`` on ``conn`` within ``limits``; return the report. Options: see
    :class:`Executor`."""
    return Executor(conn, plan, limits, **options).run()
