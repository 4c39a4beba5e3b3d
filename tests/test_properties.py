"""Property-based: whatever faults, cancels and policies come, the VM's location is known and
single, records are terminal and true, and progress never goes backwards."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmmove
from vmmove import EventKind, Phase
from vmmove.model import MigrationSpec
from vmmove.sim import Fault, parse
from vmmove.testing.contract import check_events

vm_specs = st.fixed_dictionaries(
    {
        "memory_mib": st.integers(256, 8192),
        "dirty_mib_s": st.integers(0, 600),
        "working_set_mib": st.integers(8, 2048),
        "power": st.sampled_from(["running", "running", "stopped"]),
    }
)
faults = st.one_of(
    st.none(),
    st.builds(
        Fault,
        kind=st.sampled_from(["target-fails", "link-drop", "reserve-refused"]),
        phase=st.sampled_from(
            [
                Phase.REQUESTING,
                Phase.TRANSFERRING,
                Phase.SWITCHING_OVER,
                Phase.POSTCOPY,
                Phase.COMPLETING,
            ]
        ),
        after=st.floats(0, 3),
    ),
)
cancel_at = st.one_of(st.none(), st.sampled_from(list(Phase)))
policies = st.sampled_from(sorted(vmmove.PRESETS))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vms=st.lists(vm_specs, min_size=1, max_size=4),
    plan=st.lists(st.tuples(faults, cancel_at, policies, st.sampled_from(["live", "cold", "auto"]),
                            st.sampled_from([None, "b", "c"])), min_size=1, max_size=4),
    link=st.integers(50, 2000),
)  # fmt: skip
def test_vm_location_is_always_known_and_single(
    vms: list[dict[str, object]],
    plan: list[tuple[Fault | None, Phase | None, str, str, str | None]],
    link: int,
) -> None:
    inventory = parse(
        {
            "link_mib_s": link,
            "host": [{"name": n, "memory_gib": 64} for n in "abc"],
            "vm": [{"name": f"v{i}", "host": "a", **s} for i, s in enumerate(vms)],
        }
    )
    conn = vmmove.connect("sim://", inventory=inventory)
    backend = conn.backend
    handles = []
    for i, (fault, cancel, policy, mode, target) in enumerate(plan):
        name = f"v{i % len(vms)}"
        if fault is not None:
            backend.inject(Fault(kind=fault.kind, vm=name, phase=fault.phase, after=fault.after))  # type: ignore[attr-defined]
        try:
            m = conn.migrate(spec=MigrationSpec(vm=name, target=target, mode=mode, policy=policy,
                                                completion_budget_per_gib=30))  # fmt: skip
        except vmmove.Conflict:
            continue
        handles.append((m, cancel))
    for m, cancel in handles:
        events = []
        for event in m.events():
            events.append(event)
            if event.kind is EventKind.PHASE and event.phase is cancel:
                m.cancel()
        check_events(events)
        record = m.record
        assert record.phase.terminal
        location = conn.backend.locate(record.vm)
        if record.error_type == "PostcopyFailed":
            assert record.vm_host is None  # the one loud exception: the VM may be lost
            continue
        # Terminal records name a host, and it is where the VM is (later moves aside).
        assert record.vm_host is not None
        later = [
            h
            for h, _ in handles
            if h.record.vm == record.vm and h.record.created_at >= record.created_at
        ]
        if later[-1] is m:
            assert location == record.vm_host
        if record.phase is not Phase.COMPLETED:
            assert record.vm_host == record.source
    # Single: every VM is on exactly one host, and no reservation outlives its migration.
    hosts = conn.hosts()
    assert sum(h.allocated.memory for h in hosts) == sum(
        v.memory for v in conn.vms() if conn.backend.locate(v.id) is not None
    )
