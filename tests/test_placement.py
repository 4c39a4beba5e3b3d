"""Placement: every filter says no with a reason, weighers rank, explain() shows both, and the
cost model behaves like pre-copy does (more bandwidth never sends more data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmmove
from vmmove.errors import InvalidInput, PrecheckFailed
from vmmove.model import (
    Capacity,
    CpuInfo,
    GiB,
    HostInfo,
    HostState,
    MiB,
    PowerState,
    Storage,
    VMInfo,
)
from vmmove.placement import (
    PlacementContext,
    PlacementRegistry,
    best,
    build_context,
    choose,
    explain,
    predict,
)


def host(
    name: str,
    *,
    memory_gib: int = 64,
    used_gib: int = 0,
    cpus: int = 32,
    used_cpus: int = 0,
    cluster: str = "lab",
    state: HostState = HostState.UP,
    features: frozenset[str] = frozenset(),
    vendor: str = "GenuineIntel",
    extra: Mapping[str, str] | None = None,
) -> HostInfo:
    return HostInfo(
        id=name,
        name=name,
        cluster=cluster,
        state=state,
        capacity=Capacity(cpus=cpus, memory=memory_gib * GiB),
        allocated=Capacity(cpus=used_cpus, memory=used_gib * GiB),
        cpu=CpuInfo(vendor=vendor, features=features),
        extra=extra or {},
    )


def vm(
    name: str = "v",
    *,
    on: str = "a",
    memory_gib: float = 4,
    vcpus: int = 2,
    dirty_mib_s: float = 0,
    extra: Mapping[str, str] | None = None,
    power: PowerState = PowerState.RUNNING,
) -> VMInfo:
    return VMInfo(
        id=name,
        name=name,
        host=on,
        power=power,
        memory=int(memory_gib * GiB),
        vcpus=vcpus,
        dirty_rate=dirty_mib_s * MiB,
        extra=extra or {},
    )


def verdict(
    v: VMInfo, hosts: list[HostInfo], ctx: PlacementContext | None = None
) -> dict[str, str]:
    """host name -> "ok" or the reasons it was refused."""
    return {c.host.name: "; ".join(c.rejected) or "ok" for c in explain(v, hosts, ctx)}


# ---- filters ------------------------------------------------------------------------------
def test_memory_counts_reservations_and_headroom() -> None:
    hosts = [host("a"), host("b", memory_gib=64, used_gib=56)]
    v = vm(memory_gib=4)
    assert verdict(v, hosts)["b"] == "ok"
    ctx = PlacementContext(reserved_memory={"b": 6 * GiB})
    assert "memory: needs 4096 MiB, 2048 MiB free" in verdict(v, hosts, ctx)["b"]
    ctx = PlacementContext(headroom=0.1)
    assert "after 10% headroom" in verdict(v, hosts, ctx)["b"]


def test_vcpu_allocation_ratio_is_off_unless_asked() -> None:
    hosts = [host("a"), host("b", cpus=8, used_cpus=15)]
    v = vm(vcpus=2)
    assert verdict(v, hosts)["b"] == "ok"
    reasons = verdict(v, hosts, PlacementContext(cpu_ratio=2.0))["b"]
    assert reasons == "cpus: needs 2 vCPUs, 1 of 16 left"


def test_maintenance_and_draining_hosts_take_nothing() -> None:
    hosts = [host("a"), host("b", state=HostState.MAINTENANCE), host("c")]
    out = verdict(vm(), hosts, PlacementContext(avoid=frozenset({"c"})))
    assert out["b"] == "accepts-vms: host is maintenance"
    assert out["c"] == "draining: being emptied"
    assert out["a"].startswith("not-source")


def test_cpu_compatibility_arch_vendor_features() -> None:
    hosts = [
        host("a"),
        host("old", features=frozenset({"sse4_2"})),
        host("new", features=frozenset({"sse4_2", "avx512f"})),
        host("amd", features=frozenset({"sse4_2", "avx512f"}), vendor="AuthenticAMD"),
    ]
    v = vm(extra={"cpu_features": "avx512f, sse4_2", "cpu_vendor": "GenuineIntel"})
    out = verdict(v, hosts)
    assert out["new"] == "ok"
    assert out["old"] == "cpu-compatible: CPU lacks avx512f"
    assert out["amd"] == "cpu-compatible: CPU vendor AuthenticAMD, VM needs GenuineIntel"
    assert "CPU architecture" in verdict(vm(extra={"cpu_arch": "aarch64"}), hosts)["new"]


def test_storage_must_be_reachable() -> None:
    hosts = [
        host("a"),
        host("b", extra={"datastores": "ds1,ds2"}),
        host("c", extra={"datastores": "ds1"}),
        host("d"),
    ]
    out = verdict(vm(extra={"datastores": "ds2"}), hosts)
    assert out["b"] == "ok"
    assert out["c"] == "storage: cannot reach datastore ds2"
    assert out["d"] == "storage: cannot reach datastore ds2"
    assert verdict(vm(), hosts)["d"] == "ok"  # a VM that names no datastore goes anywhere
    local = replace(vm(extra={"datastores": "ds2"}), storage=Storage.LOCAL)
    assert verdict(local, hosts)["d"] == "ok"  # its disks are copied along


def test_anti_affinity_keeps_group_apart() -> None:
    hosts = [host("a"), host("b"), host("c")]
    web1 = vm("web-1", on="a", extra={"anti_affinity": "web"})
    web2 = vm("web-2", on="b", extra={"anti_affinity": "web"})
    ctx = build_context(hosts, [web1, web2])
    out = verdict(web1, hosts, ctx)
    assert out["b"] == "anti-affinity: 1 other VM of group web runs there"
    assert out["c"] == "ok"


def test_affinity_follows_the_group_unless_its_home_is_being_emptied() -> None:
    hosts = [host("a"), host("b"), host("c")]
    app = vm("app", on="a", extra={"affinity": "shop"})
    db = vm("db", on="b", extra={"affinity": "shop"})
    ctx = build_context(hosts, [app, db])
    out = verdict(app, hosts, ctx)
    assert out["b"] == "ok"
    assert out["c"] == "affinity: group shop runs on b"
    assert verdict(db, hosts, ctx)["c"] == "affinity: group shop runs on a"
    # Emptying the group's only home: the first to leave may go anywhere...
    both = [vm("app", on="b", extra={"affinity": "shop"}), db]
    ctx = build_context(hosts, both, avoid={"b"})
    assert verdict(both[0], hosts, ctx)["c"] == "ok"


def test_plugin_filters_and_weighers_join_the_verdict() -> None:
    registry = PlacementRegistry()
    registry.add_filter("no-db-on-c", lambda v, h, ctx: "no" if h.name == "c" else None)
    registry.add_weigher("prefer-d", lambda v, h, ctx: 1.0 if h.name == "d" else 0.0, 100.0)
    ranked = explain(vm(), [host("a"), host("b"), host("c"), host("d")], None, registry)
    assert ranked[0].host.name == "d"
    assert ranked[0].weights["prefer-d"] == 100.0
    assert "no-db-on-c: no" in next(c for c in ranked if c.host.name == "c").rejected
    with pytest.raises(InvalidInput):
        registry.add_filter("memory", lambda v, h, ctx: None)


def test_explain_says_why_and_choose_raises_with_every_reason() -> None:
    hosts = [host("a"), host("b", memory_gib=2), host("c", state=HostState.DOWN)]
    ranked = explain(vm(memory_gib=4), hosts)
    assert [c.eligible for c in ranked] == [False, False, False]
    assert str(ranked[1]).startswith(("b: refused: memory", "c: refused: accepts-vms"))
    with pytest.raises(PrecheckFailed) as info:
        choose(vm(memory_gib=4), hosts)
    messages = " | ".join(p.message for p in info.value.problems)
    assert "b: memory: needs 4096 MiB" in messages
    assert "c: accepts-vms: host is down" in messages


def test_candidate_text_lists_weigher_shares() -> None:
    top = explain(vm(), [host("a"), host("b"), host("c", used_gib=32)])[0]
    assert top.host.name == "b"
    text = str(top)
    assert text.startswith("b: score ")
    assert "free-memory 1.00" in text
    assert sum(top.weights.values()) == pytest.approx(top.score)


def test_migration_cost_weigher_prefers_the_faster_link() -> None:
    slow = host("slow", extra={"link_mib_s": "117"})
    fast = host("fast", extra={"link_mib_s": "1170"})
    src = host("a", extra={"link_mib_s": "1170"})
    ctx = build_context([src, slow, fast], [])
    ranked = explain(vm(memory_gib=8, dirty_mib_s=50), [src, slow, fast], ctx)
    assert ranked[0].host.name == "fast"
    assert ranked[0].weights["migration-cost"] > ranked[1].weights["migration-cost"]


def test_engine_uses_placement_when_no_target_is_named() -> None:
    conn = vmmove.connect("sim://", store=vmmove.MemoryStore())
    record = conn.migrate("web-1").wait()
    assert record.target in ("host-b", "host-c")  # same cluster beats the edge hosts


# ---- the cost model -------------------------------------------------------------------------
def test_predict_a_quiet_guest_sends_its_memory_once() -> None:
    cost = predict(vm(memory_gib=4), 1000 * MiB)
    assert cost.converges
    assert cost.data == 4 * GiB
    assert cost.passes == 1
    assert cost.seconds == pytest.approx(4 * 1024 / 1000)


def test_predict_a_writer_faster_than_its_share_does_not_converge() -> None:
    heavy = vm(memory_gib=16, dirty_mib_s=600, extra={"working_set_mib": "8192"})
    assert predict(heavy, 1170 * MiB).converges
    shared = predict(heavy, 585 * MiB)
    assert not shared.converges
    assert shared.need == pytest.approx(600 * MiB / 0.8)


def test_a_declared_link_stands_in_for_hosts_that_do_not_report_one() -> None:
    from vmmove.policy import PRESETS
    from vmmove.prediction import DEFAULT_LINK, predict_migration

    guest = vm(memory_gib=1, dirty_mib_s=8)
    quiet = predict_migration(guest, host("a"), host("b"), PRESETS["balanced"])
    assert quiet.rate == DEFAULT_LINK
    slow = predict_migration(guest, host("a"), host("b"), PRESETS["balanced"], link=32 * MiB)
    assert slow.rate == 32 * MiB
    assert any("as declared" in note for note in slow.basis)
    assert slow.total_time is not None
    assert quiet.total_time is not None
    assert slow.total_time > 20 * quiet.total_time
    # A host that reports its link keeps it: the declaration only fills the gap.
    fast = host("b", extra={"link_mib_s": "16"})
    assert predict_migration(guest, host("a"), fast, PRESETS["balanced"], link=32 * MiB).rate == (
        16 * MiB
    )
    with vmmove.connect("sim://", link_mib_s=32) as conn:
        assert conn.link == 32 * MiB


@settings(max_examples=200, deadline=None)
@given(
    memory=st.integers(256, 65536),
    dirty=st.floats(0, 2000),
    ws_share=st.floats(0.01, 1.0),
    rate=st.floats(10, 5000),
    more=st.floats(1.0, 8.0),
)
def test_more_bandwidth_never_costs_more(
    memory: int, dirty: float, ws_share: float, rate: float, more: float
) -> None:
    v = vm(memory_gib=memory / 1024, dirty_mib_s=dirty,
           extra={"working_set_mib": f"{memory * ws_share:.0f}"})  # fmt: skip
    slow, fast = predict(v, rate * MiB), predict(v, rate * more * MiB)
    assert fast.converges or not slow.converges
    if slow.converges:
        assert fast.data <= slow.data + 1
        assert fast.seconds <= slow.seconds + 1e-9


hosts_strategy = st.lists(
    st.builds(
        lambda i, mem, used, state, cluster: host(
            f"h{i}", memory_gib=mem, used_gib=min(used, mem), state=state, cluster=cluster
        ),
        i=st.integers(0, 10_000),
        mem=st.integers(4, 128),
        used=st.integers(0, 128),
        state=st.sampled_from([HostState.UP, HostState.UP, HostState.MAINTENANCE]),
        cluster=st.sampled_from(["x", "y"]),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda h: h.id,
)


@settings(max_examples=150, deadline=None)
@given(hosts=hosts_strategy, memory=st.integers(1, 64), headroom=st.floats(0, 0.5))
def test_explain_agrees_with_the_filters_and_best_with_explain(
    hosts: list[HostInfo], memory: int, headroom: float
) -> None:
    v = vm(on=hosts[0].id, memory_gib=memory)
    ctx = PlacementContext(headroom=headroom, source_cluster="x")
    registry = PlacementRegistry()
    ranked = explain(v, hosts, ctx, registry)
    assert {c.host.id for c in ranked} == {h.id for h in hosts}
    for c in ranked:
        refusals = [name for name, f in registry.filters.items() if f(v, c.host, ctx)]
        assert c.eligible == (not refusals)
        assert [r.split(":")[0] for r in c.rejected] == refusals
    eligible = [c for c in ranked if c.eligible]
    if eligible:
        assert best(v, hosts, ctx, registry)[0].host.id == eligible[0].host.id
        assert choose(v, hosts, ctx, registry).id == eligible[0].host.id
        assert all(c.score is not None for c in eligible)
        assert eligible[0].score == max(c.score or 0.0 for c in eligible)
    else:
        with pytest.raises(PrecheckFailed):
            best(v, hosts, ctx, registry)


def test_headroom_must_be_a_share() -> None:
    with pytest.raises(InvalidInput):
        PlacementContext(headroom=1.5)
    with pytest.raises(InvalidInput):
        PlacementContext(cpu_ratio=0)


def test_simulator_inventory_passes_extra_through() -> None:
    from vmmove.sim import parse as sim_parse

    conn = vmmove.connect(
        "sim://",
        inventory=sim_parse(
            {
                "host": [{"name": "a", "extra": {"rack": "r1"}}, {"name": "b"}],
                "vm": [{"name": "v", "host": "a", "extra": {"anti_affinity": "web"}}],
            }
        ),
    )
    assert conn.vm("v").extra["anti_affinity"] == "web"
    assert "resident_mib" in conn.vm("v").extra
    assert conn.host("a").extra["rack"] == "r1"


def test_migrate_without_a_target_honours_anti_affinity() -> None:
    from vmmove.sim import parse as sim_parse

    conn = vmmove.connect(
        "sim://",
        inventory=sim_parse(
            {
                "host": [{"name": "a"}, {"name": "b", "memory_gib": 512}, {"name": "c"}],
                "vm": [
                    {"name": "web-1", "host": "a", "extra": {"anti_affinity": "web"}},
                    {"name": "web-2", "host": "b", "extra": {"anti_affinity": "web"}},
                ],
            }
        ),
    )
    # b has the most free memory, but web-2 of the same group runs there.
    assert conn.migrate("web-1").wait().vm_host == "c"


def test_a_forecast_says_whether_it_knew_the_working_set() -> None:
    """Without the platform's working set every page may be rewritten: the second pass is
    forecast as large as the dirt of the first allows, and the basis says so."""
    from vmmove.policy import PRESETS
    from vmmove.prediction import Prediction, predict_migration

    def forecast(**extra: str) -> Prediction:
        guest = vm(memory_gib=0.25, dirty_mib_s=32, extra={"resident_mib": "194", **extra})
        return predict_migration(
            guest, host("a"), host("b"), PRESETS["balanced"], link=31 * MiB, allow_postcopy=False
        )

    known, unknown = forecast(working_set_mib="128"), forecast()
    assert any("working set 128 MiB" in note for note in known.basis)
    assert any("working set not known" in note for note in unknown.basis)
    assert known.data < unknown.data  # pass 2 re-sends 128 MiB, not the ~190 a first pass dirties
    # A figure read from a first pass (libvirt's) caps passes no longer than that one.
    seen = forecast(working_set_mib="128", working_set_window_s="7")
    assert seen.data == known.data
    assert any("dirtied in 7 s" in note for note in seen.basis)
    short = forecast(working_set_mib="128", working_set_window_s="2")  # pass 1 here: ~6 s
    assert short.data == unknown.data


def test_a_postcopy_forecast_pauses_for_the_platforms_switch() -> None:
    from vmmove.policy import PRESETS
    from vmmove.prediction import POSTCOPY_PAUSE_S, predict_migration

    guest = vm(memory_gib=0.25, dirty_mib_s=64, extra={"working_set_mib": "128"})
    for switch in (POSTCOPY_PAUSE_S, 0.01):
        p = predict_migration(
            guest,
            host("a"),
            host("b"),
            PRESETS["minimal-downtime"],
            link=32 * MiB,
            postcopy_switch_s=switch,
        )
        assert p.postcopy
        assert p.downtime_ms == pytest.approx(switch * 1000)
        assert any(f"{switch * 1000:g} ms of pause at the switch" in b for b in p.basis)


def test_compression_is_forecast_from_what_the_guests_last_migration_paid() -> None:
    """A Compress step counts only with the guest's own figure (``delta_ratio``), and only
    from the pass after the one that fills XBZRLE's cache: passes 1 and 2 go whole."""
    from vmmove.policy import PRESETS
    from vmmove.prediction import Prediction, predict_migration

    def forecast(**extra: str) -> Prediction:
        guest = vm(
            memory_gib=0.25,
            dirty_mib_s=32,
            extra={"working_set_mib": "128", "resident_mib": "194", **extra},
        )
        return predict_migration(
            guest, host("a"), host("b"), PRESETS["balanced"], link=31 * MiB, allow_postcopy=False
        )

    whole = forecast()
    assert "compress" in " ".join(whole.steps)
    assert any("compression not counted" in note for note in whole.basis)
    for unusable in ("abc", "0", "1.5", "-0.3"):
        assert forecast(delta_ratio=unusable) == whole
    assert forecast(delta_ratio="1").total_time == whole.total_time  # a delta as big as a page
    cheap = forecast(delta_ratio="0.35")
    assert cheap.converges
    assert whole.converges
    assert any("35% of a page" in note for note in cheap.basis)
    assert cheap.total_time is not None
    assert whole.total_time is not None
    assert cheap.total_time < whole.total_time
    assert cheap.data < whole.data
    # the first pass (the non-zero memory) and the second (the working set) are sent whole
    assert cheap.data >= (194 + 128) * MiB
    assert cheap.downtime_ms is not None
    assert whole.downtime_ms is not None
    assert cheap.downtime_ms <= whole.downtime_ms


def test_compressed_passes_start_at_the_third() -> None:
    """Pass by pass, with compression the only step: 194 MiB, then the 128 MiB working set
    whole (the cache fills), then deltas at a quarter of a page, until the rest fits 300 ms."""
    from vmmove.policy import AtIteration, Compress, Policy, Step
    from vmmove.prediction import predict_migration

    only = Policy(name="compress", steps=(Step(trigger=AtIteration(n=1), action=Compress()),))
    guest = vm(
        memory_gib=0.25,
        dirty_mib_s=32,
        extra={"working_set_mib": "128", "resident_mib": "194", "delta_ratio": "0.25"},
    )
    p = predict_migration(guest, host("a"), host("b"), only, link=31 * MiB, switchover_s=0)
    # pass 1: 194 MiB; the guest rewrites its 128 MiB meanwhile (6.3 s at 32 MiB/s)
    # pass 2: 128 MiB whole (4.1 s); a quarter of it would take 1.03 s, over 300 ms
    # pass 3: 128 MiB as deltas, 32 MiB (1.03 s); the guest dirties 33 MiB, whose deltas
    # (8.3 MiB, 0.27 s) fit: the switch-over sends them
    third = 128 * 0.25
    last = min(128.0, 32 * third / 31) * 0.25
    assert p.passes == 3
    assert p.data == pytest.approx((194 + 128 + third + last) * MiB, rel=1e-3)
    assert p.downtime_ms == pytest.approx(last / 31 * 1000, rel=1e-3)


def test_a_forecast_skips_the_steps_the_platform_cannot_take() -> None:
    """What the engine would skip for want of a capability, the walk skips too (and says so):
    a platform without auto-converge or post-copy is not forecast to converge by them."""
    from vmmove.backend import Capabilities
    from vmmove.policy import PRESETS
    from vmmove.prediction import forecast, predict_migration

    guest = vm(memory_gib=0.25, dirty_mib_s=32, extra={"working_set_mib": "128"})
    policy = PRESETS["converge"]
    every = predict_migration(guest, host("a"), host("b"), policy, link=31 * MiB)
    bare = Capabilities(max_downtime=True)
    plain = predict_migration(guest, host("a"), host("b"), policy, link=31 * MiB, capabilities=bare)
    assert every.converges
    assert any("post-copy" in s or "auto-converge" in s for s in every.steps)
    assert not any("post-copy" in s or "auto-converge" in s for s in plain.steps)
    assert not plain.converges  # a writer at the link's rate, and nothing to slow it
    assert any("for want of the platform's capability" in note for note in plain.basis)
    # the record's forecast follows the same rule
    kept = forecast(guest, host("a"), host("b"), policy, link=31 * MiB, capabilities=bare)
    assert kept.total_time is None
