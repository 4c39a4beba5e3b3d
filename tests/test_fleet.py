"""Fleet plans and the bounded executor, on the simulator's virtual clock.

Property-based: no plan overcommits a host at any step; the executor never exceeds a limit
nor a host's memory (both checked from the records' timestamps), and every VM ends
somewhere the report names, with a reason when it did not move.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmmove
from vmmove import Phase, fleet
from vmmove.model import Capacity, GiB, HostInfo, HostState, MiB, PowerState, VMInfo
from vmmove.placement import groups_of
from vmmove.sim import Fault, parse


def connect(inventory: Mapping[str, Any]) -> vmmove.Connection:
    return vmmove.connect("sim://", inventory=parse(dict(inventory)), store=vmmove.MemoryStore())


def where(conn: vmmove.Connection) -> dict[str, str]:
    return {v.name: v.host for v in conn.vms()}


# ---- checks over a report ---------------------------------------------------------------------
def spans(report: fleet.Report) -> list[tuple[float, float, fleet.Outcome, fleet.Attempt]]:
    return [
        (a.started_at, a.ended_at, o, a) for o in report.outcomes for a in o.attempts if a.migration
    ]


def check_limits(report: fleet.Report, clusters: Mapping[str, str]) -> None:
    """At every start, the moves in flight (from the records' timestamps) fit every limit."""
    lim = report.limits
    items = spans(report)
    for t, _, o, a in items:
        live = [(o2, a2) for s, e, o2, a2 in items if s <= t < e]
        assert lim.total is None or len(live) <= lim.total
        out = sum(1 for o2, _ in live if o2.source == o.source)
        into = sum(1 for _, a2 in live if a2.target == a.target)
        assert lim.per_source is None or out <= lim.per_source, (t, o.vm_name, out)
        assert lim.per_target is None or into <= lim.per_target, (t, a.target, into)
        if lim.per_cluster is not None:
            for key in {clusters[o.source], clusters[a.target]}:
                n = sum(1 for o2, a2 in live if key in (clusters[o2.source], clusters[a2.target]))
                assert n <= lim.per_cluster, (t, key, n)


def check_memory(report: fleet.Report, hosts: Sequence[HostInfo]) -> None:
    """Replaying starts and ends in time order, no start puts its target over its limit:
    VMs there plus the reservations of every move in flight to it."""
    used = {h.id: h.allocated.memory for h in hosts}
    limit = {h.id: h.capacity.memory - int(h.capacity.memory * report.plan.headroom) for h in hosts}
    events: list[tuple[float, int, fleet.Outcome, fleet.Attempt]] = []
    for s, e, o, a in spans(report):
        events += [(s, 1, o, a), (e, 0, o, a)]
    events.sort(key=lambda x: (x[0], x[1]))
    for _, kind, o, a in events:
        if kind == 1:
            used[a.target] += o.memory
            assert used[a.target] <= limit[a.target], (a.target, used[a.target], limit[a.target])
        elif a.phase is Phase.COMPLETED:
            used[o.source] -= o.memory
        else:
            used[a.target] -= o.memory
            if a.vm_host not in (None, o.source):
                used[o.source] -= o.memory
                used[a.vm_host] += o.memory


def check_outcomes(report: fleet.Report, conn: vmmove.Connection) -> None:
    """Every VM of the plan is where the report says, with a reason if it did not move."""
    now = {v.id: v for v in conn.vms()}
    planned = {m.vm for m in report.plan.moves} | {s.vm for s in report.plan.stays}
    assert {o.vm for o in report.outcomes} == planned
    for o in report.outcomes:
        if o.status == "lost":
            assert o.host is None
            assert conn.backend.locate(o.vm) is None
            continue
        assert now[o.vm].host == o.host, (o.vm_name, now[o.vm].host, o.host)
        if o.status == "moved":
            assert o.host != o.source
            assert o.attempts[-1].phase is Phase.COMPLETED
        else:
            assert o.host == o.source or o.reason.startswith("the plan is stale")
            assert o.reason
    left = {s.vm for s in report.left_behind}
    for hid in report.plan.frees:
        on_it = {v.id for v in now.values() if v.host == hid}
        assert on_it <= left
        assert all(s.reason for s in report.left_behind)


# ---- plans: examples ----------------------------------------------------------------------------
def test_evacuate_plan_on_the_sample_moves_nothing_and_explains() -> None:
    conn = vmmove.connect("sim://", store=vmmove.MemoryStore())
    before = where(conn)
    plan = fleet.evacuate(conn, "host-a")
    assert where(conn) == before  # a plan is only data
    assert {m.vm_name for m in plan.moves} == {"web-1", "web-2", "db-1", "batch-1"}
    assert plan.complete
    assert plan.frees == ("host-a",)
    assert all(m.target not in ("host-a",) for m in plan.moves)
    assert next(m for m in plan.moves if m.vm_name == "batch-1").mode.value == "cold"
    assert plan.moves[0].vm_name == "db-1"  # longest predicted first
    assert "score" in plan.moves[0].placement
    assert fleet.overcommits(plan, conn.hosts()) == []
    json.dumps(plan.to_dict())  # plain JSON: no infinities, no objects
    plan = fleet.evacuate(conn, "host-c")
    assert [(s.vm_name, s.reason) for s in plan.stays] == [
        ("gpu-1", "cannot migrate live: PCI passthrough device")
    ]


def test_evacuate_runs_and_leaves_the_host_empty() -> None:
    conn = vmmove.connect("sim://", store=vmmove.MemoryStore())
    plan = fleet.evacuate(conn, "host-a")
    report = fleet.execute(conn, plan)
    assert report.ok
    assert not [v for v in conn.vms() if v.host == "host-a"]
    assert report.makespan > 0
    check_outcomes(report, conn)
    json.dumps(report.to_dict())


def small(
    hosts: Iterable[tuple[str, int]], vms: Iterable[tuple[str, str, int]], **extra: Any
) -> dict[str, Any]:
    return {
        "link_mib_s": extra.pop("link", 1000),
        "host": [{"name": n, "memory_gib": g, "cluster": "c"} for n, g in hosts],
        "vm": [
            {"name": n, "host": h, "memory_mib": m, "resident_mib": m // 2, **extra}
            for n, h, m in vms
        ],
    }


def test_evacuate_without_room_says_exactly_what_stays_and_why() -> None:
    conn = connect(small([("a", 64), ("b", 10)], [(f"v{i}", "a", 8192) for i in range(3)]))
    plan = fleet.evacuate(conn, "a")
    assert len(plan.moves) == 1
    assert len(plan.stays) == 2
    for stay in plan.stays:
        assert stay.reason.startswith("no host can take it: memory refused 1 host")
        assert "b: needs 8192 MiB, 2048 MiB free" in stay.reason
    report = fleet.execute(conn, plan)
    assert not report.ok
    assert {s.vm_name for s in report.left_behind} == {s.vm_name for s in plan.stays}
    check_outcomes(report, conn)


def test_two_moves_filling_a_target_both_start() -> None:
    # The engine counts a move in flight twice against the sim's free memory (see
    # docs/fleet.md); the executor waits rather than have the second refused.
    conn = connect(small([("a", 64), ("b", 8)], [("v1", "a", 4096), ("v2", "a", 4096)]))
    report = fleet.execute(conn, fleet.evacuate(conn, "a"))
    assert report.ok
    assert all(len(o.attempts) == 1 for o in report.outcomes)


def test_a_failed_move_is_retried_elsewhere() -> None:
    conn = connect(small([("a", 64), ("b", 64), ("c", 32)], [("v", "a", 2048)]))
    plan = fleet.evacuate(conn, "a")
    assert plan.moves[0].target == "b"
    conn.backend.inject(Fault(kind="target-fails", vm="v", host="b", after=0.2))  # type: ignore[attr-defined]
    report = fleet.execute(conn, plan)
    (outcome,) = report.outcomes
    assert outcome.status == "moved"
    assert outcome.host == "c"
    assert [a.target for a in outcome.attempts] == ["b", "c"]
    assert "injected fault" in (outcome.attempts[0].error or "")


def test_a_move_that_keeps_failing_is_reported_with_its_attempts() -> None:
    conn = connect(small([("a", 64), ("b", 64), ("c", 64)], [("v", "a", 2048)]))
    for host in ("b", "c"):
        conn.backend.inject(Fault(kind="link-drop", vm="v", host=host, after=0.1))  # type: ignore[attr-defined]
    report = fleet.execute(conn, fleet.evacuate(conn, "a"), max_attempts=2)
    (outcome,) = report.outcomes
    assert outcome.status == "stayed"
    assert outcome.host == "a"
    assert "after 2 attempts" in outcome.reason
    assert report.left_behind[0].vm_name == "v"


def test_a_vm_lost_in_post_copy_is_reported_not_retried() -> None:
    conn = connect(small([("a", 64), ("b", 64), ("c", 64)], [("v", "a", 2048)], dirty_mib_s=50))
    conn.backend.inject(Fault(kind="link-drop", vm="v", phase=Phase.POSTCOPY, after=0.01))  # type: ignore[attr-defined]
    plan = fleet.evacuate(conn, "a")
    report = fleet.execute(conn, plan, policy="minimal-downtime", migrate_options={"bandwidth": 20})
    (outcome,) = report.outcomes
    assert outcome.status == "lost"
    assert outcome.host is None
    assert len(outcome.attempts) == 1


def test_stop_starts_nothing_more() -> None:
    conn = connect(small([("a", 64), ("b", 64)], [(f"v{i}", "a", 1024) for i in range(5)]))
    plan = fleet.evacuate(conn, "a")
    executor: fleet.Executor

    def observe(event: fleet.FleetEvent) -> None:
        if event.kind == "start":
            executor.stop(cancel_running=True)

    executor = fleet.Executor(conn, plan, fleet.Limits(per_source=1), observer=observe)
    report = executor.run()
    assert len([o for o in report.outcomes if o.attempts]) == 1
    stopped = [o for o in report.outcomes if not o.attempts]
    assert len(stopped) == 4
    assert all(o.reason == "stopped before it started" and o.host == "a" for o in stopped)
    check_outcomes(report, conn)


def heavy_and_light() -> dict[str, Any]:
    """Two guests that converge only with most of a 1000 MiB/s link, and six quiet ones."""
    vms = [
        {"name": f"heavy-{i}", "host": "src", "memory_mib": 8192, "resident_mib": 6144,
         "working_set_mib": 4096, "dirty_mib_s": 700}
        for i in range(2)
    ] + [
        {"name": f"light-{i}", "host": "src", "memory_mib": 2048, "resident_mib": 1024,
         "working_set_mib": 128, "dirty_mib_s": 5}
        for i in range(6)
    ]  # fmt: skip
    hosts = [{"name": "src", "memory_gib": 128}] + [
        {"name": f"dst-{i}", "memory_gib": 128} for i in range(4)
    ]
    return {"link_mib_s": 1000, "host": hosts, "vm": vms}


def test_link_aware_scheduling_converges_where_fifo_aborts() -> None:
    limits = fleet.Limits(per_source=4, per_target=4, per_cluster=None)
    conn = connect(heavy_and_light())
    plan = fleet.evacuate(conn, "src", policy="safe")
    by_name = fleet.Plan(
        **{**plan.__dict__, "moves": tuple(sorted(plan.moves, key=lambda m: m.vm_name))}
    )
    fifo = fleet.execute(conn, by_name, limits, order="plan", link_aware=False, max_attempts=1)
    assert fifo.aborted > 0
    assert any(o.vm_name.startswith("heavy") and o.status == "stayed" for o in fifo.outcomes)

    conn = connect(heavy_and_light())
    smart = fleet.execute(conn, fleet.evacuate(conn, "src", policy="safe"), limits)
    assert smart.ok
    assert smart.aborted == 0
    assert smart.makespan < fifo.makespan
    heavy = [a for o in smart.outcomes if o.vm_name.startswith("heavy") for a in o.attempts]
    for a in heavy:  # nothing else transfers from src while a heavy writer does
        assert a.phase is Phase.COMPLETED
    check_limits(smart, {h.name: "" for h in conn.hosts()})


def test_rebalance_brings_hosts_under_the_line() -> None:
    vms = [(f"v{i}", "a", 8192) for i in range(6)] + [("w", "b", 4096)]
    conn = connect(small([("a", 64), ("b", 64), ("c", 64)], vms))
    plan = fleet.rebalance(conn, "c", threshold=0.1)
    assert plan.moves
    assert {m.source for m in plan.moves} == {"a"}
    assert plan.after["max_use"] < plan.before["max_use"]
    assert plan.after["stdev_use"] < plan.before["stdev_use"]
    report = fleet.execute(conn, plan)
    assert report.ok
    hosts = conn.hosts()
    mean = sum(h.allocated.memory for h in hosts) / sum(h.capacity.memory for h in hosts)
    assert all(h.allocated.memory / h.capacity.memory <= mean + 0.1 for h in hosts)


def test_consolidate_frees_hosts_and_they_end_empty() -> None:
    vms = [(f"v{i}", f"h{i % 6}", 4096) for i in range(12)]
    conn = connect(small([(f"h{i}", 32) for i in range(6)], vms))
    plan = fleet.consolidate(conn)
    # 48 GiB on 32 GiB hosts: two hosts suffice.
    assert len(plan.frees) == 4
    assert plan.after["hosts_used"] == plan.before["lower_bound"] == 2
    report = fleet.execute(conn, plan, fleet.Limits(per_source=2, per_target=2, per_cluster=4))
    assert report.ok
    assert {v.host for v in conn.vms()} == {"h0", "h1", "h2", "h3", "h4", "h5"} - set(plan.frees)
    check_limits(report, {h.name: h.cluster for h in conn.hosts()})


def test_consolidate_keeps_hosts_with_vms_that_cannot_move() -> None:
    conn = vmmove.connect("sim://", store=vmmove.MemoryStore())
    plan = fleet.consolidate(conn, "lab")
    assert "host-c" not in plan.frees  # gpu-1 cannot move live
    assert "host-b" not in plan.frees  # cache-1 would not converge on its link
    assert any("gpu-1" in n and "cache-1" in n for n in plan.notes)


def test_a_stale_plan_moves_nothing_twice() -> None:
    conn = connect(small([("a", 64), ("b", 64), ("c", 64)], [("v", "a", 1024), ("w", "a", 1024)]))
    plan = fleet.evacuate(conn, "a")
    conn.migrate("v", to="c").wait()  # someone moved it meanwhile
    report = fleet.execute(conn, plan)
    outcome = {o.vm_name: o for o in report.outcomes}
    assert outcome["v"].status == "stayed"
    assert outcome["v"].host == "c"
    assert outcome["v"].reason == "the plan is stale: runs on c now"
    assert outcome["w"].status == "moved"
    assert report.ok is False or report.left_behind == ()
    check_outcomes(report, conn)


def test_unknown_host_or_cluster() -> None:
    conn = vmmove.connect("sim://", store=vmmove.MemoryStore())
    with pytest.raises(vmmove.NotFound):
        fleet.evacuate(conn, "nope")
    with pytest.raises(vmmove.NotFound, match="known: edge, lab"):
        fleet.rebalance(conn, "nope")
    with pytest.raises(vmmove.InvalidInput):
        fleet.Limits(per_source=0)


def test_downtime_schedule_follows_the_policy_and_the_cap() -> None:
    balanced = vmmove.PRESETS["balanced"]
    assert fleet.downtime_schedule(balanced) == ((1, 0.3), (2, 0.5), (4, 1.0))
    assert fleet.downtime_schedule(balanced, max_downtime=400) == ((1, 0.3), (2, 0.4), (4, 0.4))


# ---- plans: properties -------------------------------------------------------------------------
def host_info(i: int, mem: int, used: int, cluster: str, state: HostState) -> HostInfo:
    return HostInfo(
        id=f"h{i}",
        name=f"h{i}",
        cluster=cluster,
        state=state,
        capacity=Capacity(cpus=32, memory=mem * GiB),
        allocated=Capacity(cpus=0, memory=used),
    )


@st.composite
def inventories(draw: st.DrawFn) -> tuple[list[HostInfo], list[VMInfo]]:
    n_hosts = draw(st.integers(2, 8))
    specs = [
        (draw(st.integers(8, 64)), draw(st.sampled_from(["x", "y"])),
         draw(st.sampled_from([HostState.UP] * 4 + [HostState.MAINTENANCE])))
        for _ in range(n_hosts)
    ]  # fmt: skip
    vms: list[VMInfo] = []
    for i in range(draw(st.integers(0, 25))):
        on = draw(st.integers(0, n_hosts - 1))
        extra: dict[str, str] = {}
        group = draw(st.sampled_from([None, "g1", "g2"]))
        if group:
            extra["anti_affinity" if draw(st.booleans()) else "affinity"] = group
        vms.append(
            VMInfo(
                id=f"v{i}",
                name=f"v{i}",
                host=f"h{on}",
                power=draw(st.sampled_from([PowerState.RUNNING] * 3 + [PowerState.STOPPED])),
                memory=draw(st.sampled_from([1, 2, 4, 8])) * GiB,
                vcpus=2,
                live_migratable=draw(st.sampled_from([True] * 5 + [False])),
                dirty_rate=draw(st.sampled_from([0, 10, 100, 2000])) * MiB,
                extra=extra,
            )
        )
    used = {f"h{i}": 0 for i in range(n_hosts)}
    for v in vms:
        used[v.host] += v.memory
    hosts = [host_info(i, m, used[f"h{i}"], c, s) for i, (m, c, s) in enumerate(specs)]
    return hosts, vms


def check_plan(plan: fleet.Plan, hosts: list[HostInfo], vms: list[VMInfo]) -> None:
    assert fleet.overcommits(plan, hosts) == []
    moved = [m.vm for m in plan.moves]
    assert len(moved) == len(set(moved))  # each VM moves at most once
    by_id = {v.id: v for v in vms}
    state = {h.id: h.state for h in hosts}
    final = {v.id: v.host for v in vms}
    for m in plan.moves:
        assert m.target != m.source
        assert m.target not in plan.frees
        assert state[m.target] is HostState.UP
        assert by_id[m.vm].host == m.source
        final[m.vm] = m.target
    for m in plan.moves:  # a moved VM never joins another of its anti-affinity group
        for g in groups_of(by_id[m.vm])[1]:
            others = [v for v in vms if v.id != m.vm and g in groups_of(v)[1]]
            assert all(final[o.id] != m.target for o in others)


settings_plans = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@settings_plans
@given(inv=inventories(), headroom=st.sampled_from([0.0, 0.1, 0.25]), pick=st.integers(0, 7))
def test_no_evacuation_plan_overcommits(
    inv: tuple[list[HostInfo], list[VMInfo]], headroom: float, pick: int
) -> None:
    hosts, vms = inv
    src = hosts[pick % len(hosts)]
    plan = fleet.plan_evacuate(src.id, hosts, vms, headroom=headroom)
    check_plan(plan, hosts, vms)
    on_src = {v.id for v in vms if v.host == src.id}
    assert {m.vm for m in plan.moves} | {s.vm for s in plan.stays} == on_src
    assert not ({m.vm for m in plan.moves} & {s.vm for s in plan.stays})
    assert all(s.reason for s in plan.stays)


@settings_plans
@given(inv=inventories(), headroom=st.sampled_from([0.0, 0.1]), threshold=st.floats(0.0, 0.3))
def test_no_rebalance_plan_overcommits_and_roles_never_mix(
    inv: tuple[list[HostInfo], list[VMInfo]], headroom: float, threshold: float
) -> None:
    hosts, vms = inv
    plan = fleet.plan_rebalance(hosts, vms, threshold=threshold, headroom=headroom)
    check_plan(plan, hosts, vms)
    assert not ({m.source for m in plan.moves} & {m.target for m in plan.moves})
    clusters = {h.id: h.cluster for h in hosts}
    assert all(clusters[m.source] == clusters[m.target] for m in plan.moves)
    assert plan.after.get("max_use", 0) <= plan.before.get("max_use", 0) + 1e-9


@settings_plans
@given(inv=inventories(), headroom=st.sampled_from([0.0, 0.1]))
def test_no_consolidation_plan_overcommits_and_freed_hosts_end_empty(
    inv: tuple[list[HostInfo], list[VMInfo]], headroom: float
) -> None:
    hosts, vms = inv
    plan = fleet.plan_consolidate(hosts, vms, headroom=headroom)
    check_plan(plan, hosts, vms)
    moved = {m.vm for m in plan.moves}
    for v in vms:
        if v.host in plan.frees:
            assert v.id in moved
    kept = {h.id for h in hosts if h.state is HostState.UP} - set(plan.frees)
    assert all(m.target in kept for m in plan.moves)


# ---- the executor: properties on the simulator ---------------------------------------------------
@st.composite
def sim_runs(draw: st.DrawFn) -> dict[str, Any]:
    n_hosts = draw(st.integers(2, 5))
    hosts = [
        {"name": f"h{i}", "memory_gib": draw(st.sampled_from([8, 16, 32])),
         "cluster": draw(st.sampled_from(["x", "y"])),
         "link_mib_s": draw(st.sampled_from([200, 1000]))}
        for i in range(n_hosts)
    ]  # fmt: skip
    crowded = st.sampled_from([0, 0, 0, *range(n_hosts)])  # h0 holds most of the VMs
    vms = []
    for i in range(draw(st.integers(1, 14))):
        mem = draw(st.sampled_from([512, 1024, 2048, 4096]))
        vms.append(
            {"name": f"v{i}", "host": f"h{draw(crowded)}", "memory_mib": mem,
             "resident_mib": mem // 2, "working_set_mib": mem // 8,
             "dirty_mib_s": draw(st.sampled_from([0, 20, 150, 900])),
             "power": draw(st.sampled_from(["running"] * 4 + ["stopped"]))}
        )  # fmt: skip
    return {
        "inventory": {"host": hosts, "vm": vms},
        "kind": draw(st.sampled_from(["evacuate", "evacuate", "rebalance", "consolidate"])),
        "pick": draw(crowded),
        "limits": fleet.Limits(
            per_source=draw(st.sampled_from([1, 2, 3, None])),
            per_target=draw(st.sampled_from([1, 2, None])),
            per_cluster=draw(st.sampled_from([1, 3, None])),
            total=draw(st.sampled_from([None, 2, 4])),
        ),
        "headroom": draw(st.sampled_from([0.0, 0.1])),
        "policy": draw(st.sampled_from(["balanced", "safe", "converge"])),
        "order": draw(st.sampled_from(["longest-first", "plan"])),
        "link_aware": draw(st.booleans()),
        "faults": draw(
            st.lists(
                st.tuples(
                    st.integers(0, 13),
                    st.sampled_from(["target-fails", "link-drop", "reserve-refused"]),
                    st.sampled_from(
                        [Phase.REQUESTING, Phase.TRANSFERRING, Phase.SWITCHING_OVER, Phase.POSTCOPY]
                    ),
                ),
                max_size=3,
            )
        ),
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=sim_runs())
def test_the_executor_never_exceeds_a_limit_nor_a_host(run: dict[str, Any]) -> None:
    conn = connect(run["inventory"])
    hosts = conn.hosts()
    kind = run["kind"]
    if kind == "evacuate":
        plan = fleet.evacuate(conn, f"h{run['pick']}", headroom=run["headroom"])
    elif kind == "rebalance":
        plan = fleet.rebalance(conn, threshold=0.05, headroom=run["headroom"])
    else:
        plan = fleet.consolidate(conn, headroom=run["headroom"])
    assert fleet.overcommits(plan, hosts) == []
    vm_names = [v["name"] for v in run["inventory"]["vm"]]
    for index, fault_kind, phase in run["faults"]:
        if index < len(vm_names):
            conn.backend.inject(Fault(kind=fault_kind, vm=vm_names[index], phase=phase, after=0.1))  # type: ignore[attr-defined]
    report = fleet.execute(
        conn,
        plan,
        run["limits"],
        policy=run["policy"],
        order=run["order"],
        link_aware=run["link_aware"],
    )
    check_limits(report, {h.id: h.cluster for h in hosts})
    check_memory(report, hosts)
    check_outcomes(report, conn)
    if kind == "evacuate":
        # Empty, or every VM still there is named with the reason.
        src = plan.frees[0]
        left = {v.id for v in conn.vms() if v.host == src}
        assert left == {s.vm for s in report.left_behind}
        assert report.ok == (not left and all(o.status == "moved" for o in report.outcomes))
