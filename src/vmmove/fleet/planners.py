"""The planners. Each reads the inventory only and returns a :class:`~vmmove.fleet.Plan`.

:func:`plan_evacuate`, :func:`plan_rebalance`, :func:`plan_consolidate` and
:func:`plan_moves` work on lists of hosts and VMs; :func:`evacuate`, :func:`rebalance`,
:func:`consolidate` and :func:`moves` run them on a connection's estate with its plugins'
placement rules and policies.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from vmmove.errors import NotFound, PrecheckFailed
from vmmove.fleet.plan import Move, Plan, Stay, memory_limit
from vmmove.fleet.planning import (
    assign,
    check_cluster,
    converges,
    find_host,
    immovable,
    longest_first,
    planned_move,
    plural,
    refusals,
    resolve_policy,
    used_after,
    utilisation,
)
from vmmove.model import HostInfo, HostState, VMInfo
from vmmove.placement import (
    PlacementRegistry,
    best,
    build_context,
    explain,
    groups_of,
    link_of,
    predict,
)
from vmmove.policy import Policy
from vmmove.prediction import downtime_schedule

if TYPE_CHECKING:
    from vmmove.engine import Connection


GiB = float(1 << 30)


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
    src = find_host(host, hosts)
    pol = policy if isinstance(policy, Policy) else resolve_policy(policy)
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
        why = immovable(vm)
        if why is not None:
            stays.append(Stay(vm=vm.id, vm_name=vm.name, host=src.id, reason=why))
            continue
        try:
            top = best(vm, others, ctx, registry)[0]
        except PrecheckFailed:
            reason = refusals(explain(vm, others, ctx, registry))
            stays.append(Stay(vm=vm.id, vm_name=vm.name, host=src.id, reason=reason))
            continue
        assign(ctx, vm, top.host.id)
        moves.append(
            planned_move(
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
    used = used_after(pool, moves)
    return Plan(
        kind="evacuate",
        scope=src.name,
        moves=longest_first(moves),
        stays=tuple(stays),
        frees=(src.id,),
        headroom=headroom,
        policy=pol.name,
        before=utilisation(pool),
        after=utilisation(pool, used),
    )


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
    pol = policy if isinstance(policy, Policy) else resolve_policy(policy)
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
                if immovable(v) is None
                and not groups_of(v)[0]
                and v.memory <= 2 * excess
                and converges(v, link_of(h), schedule)
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
                assign(ctx, vm, top.host.id)
                by_host[h.id].remove(vm)
                used[h.id] -= vm.memory
                used[top.host.id] += vm.memory
                role[h.id], role[top.host.id] = "give", "take"
                moves.append(
                    planned_move(
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
        moves=longest_first(moves),
        headroom=headroom,
        policy=pol.name,
        before=utilisation(pool_all),
        after=utilisation(pool_all, used_after(pool_all, moves)),
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
    pol = policy if isinstance(policy, Policy) else resolve_policy(policy)
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
        usable = {h.id: memory_limit(h, headroom) for h in pool}
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
            if immovable(v) is not None or not converges(v, link_of(h), schedule)
        ]
        pinned = {v.host for v in stuck_vms}
        if stuck_vms:
            listed = ", ".join(v.name for v in stuck_vms[:5])
            listed += ", ..." if len(stuck_vms) > 5 else ""
            notes.append(
                f"cluster {c or '-'}: {len(stuck_vms)} VM{plural(len(stuck_vms))} cannot move live "
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
                f"({occupied} host{plural(occupied)} with VMs, at least {lower} needed)"
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
                planned_move(
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
    figures_before = {**utilisation(pool_all), **before}
    figures_after = {**utilisation(pool_all, used_after(pool_all, moves)), **after}
    figures_before["lower_bound"] = figures_after["lower_bound"] = float(lower_total)
    return Plan(
        kind="consolidate",
        scope=cluster or "all clusters",
        moves=longest_first(moves),
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
        assign(ctx, vm, hid)
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
    pol = policy if isinstance(policy, Policy) else resolve_policy(policy)
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
        target = find_host(host_ref, hosts)
        why = immovable(vm)
        if why is None:
            verdict = explain(vm, [target], ctx, registry)[0]
            why = f"{target.name}: {'; '.join(verdict.rejected)}" if verdict.rejected else None
        if why is not None:
            stays.append(Stay(vm=vm.id, vm_name=vm.name, host=vm.host, reason=why))
            continue
        assign(ctx, vm, target.id)
        src = host_by_id.get(vm.host)
        moves.append(
            planned_move(
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
        scope=f"{len(pairs)} VM{plural(len(pairs))}",
        moves=longest_first(moves),
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
        policy=resolve_policy(policy, conn.plugins.policies),
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
    check_cluster(cluster, hosts)
    return plan_rebalance(
        hosts,
        conn.vms(),
        cluster=cluster,
        threshold=threshold,
        max_moves=max_moves,
        registry=conn.plugins.placement,
        headroom=headroom,
        cpu_ratio=cpu_ratio,
        policy=resolve_policy(policy, conn.plugins.policies),
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
    check_cluster(cluster, hosts)
    return plan_consolidate(
        hosts,
        conn.vms(),
        cluster=cluster,
        registry=conn.plugins.placement,
        headroom=headroom,
        cpu_ratio=cpu_ratio,
        policy=resolve_policy(policy, conn.plugins.policies),
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
        policy=resolve_policy(policy, conn.plugins.policies),
        max_downtime=max_downtime,
    )
