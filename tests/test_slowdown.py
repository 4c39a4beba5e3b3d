"""The caller's limit on guest slowdown (``max_slowdown``): auto-converge starts no higher than
it, and once the platform throttles past it the live attempt ends, cold where the policy falls
back, else as a failure with the VM where it was; the predictor says the same beforehand."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import vmmove
from vmmove import Phase
from vmmove.observe.labels import action_of
from vmmove.policy import AtIteration, AutoConverge, ForceConvergence, Policy, Step, adapt
from vmmove.sim import parse
from vmmove.testing.contract import check_events
from vmmove.worker.queue import Item, spec_body

LIMIT = 30


def estate() -> vmmove.Connection:
    """A guest rewriting 1 GiB at twice the link: pre-copy alone never converges, and only a
    throttle of over 50 % would let it."""
    vm = {"name": "v", "host": "a", "memory_mib": 2048, "resident_mib": 1024,
          "working_set_mib": 1024, "dirty_mib_s": 400, "power": "running"}  # fmt: skip
    inventory = parse({"link_mib_s": 200, "host": [{"name": "a"}, {"name": "b"}], "vm": [vm]})
    return vmmove.connect("sim://", inventory=inventory)


def run(policy: str, max_slowdown: int | None) -> tuple[vmmove.MigrationRecord, list[int]]:
    conn = estate()
    m = conn.migrate("v", to="b", policy=policy, allow_postcopy=False, max_slowdown=max_slowdown)
    events = list(m.events())
    check_events(events)
    throttles = [e.progress.throttle for e in events if e.progress and e.progress.throttle]
    return m.record, throttles


def sized_note(record: vmmove.MigrationRecord) -> str:
    return next(s.reason for s in record.steps if "auto-converge(sized)" in s.step and s.applied)


def test_without_a_limit_the_guest_is_throttled_as_hard_as_it_takes() -> None:
    record, throttles = run("balanced", None)
    assert (record.phase, record.vm_host) == (Phase.COMPLETED, "b")
    assert max(throttles) > 2 * LIMIT  # what the limit below prevents
    assert "capped" not in sized_note(record)


def test_the_limit_caps_the_first_throttle_and_ends_live_past_it() -> None:
    conn = estate()
    m = conn.migrate("v", to="b", allow_postcopy=False, max_slowdown=LIMIT)
    with pytest.raises(vmmove.MigrationTimedOut, match="max_slowdown") as info:
        m.wait()
    record = m.record
    assert info.value.vm_host == "a" == record.vm_host
    assert conn.vm("v").host == "a"
    assert conn.vm("v").power is vmmove.PowerState.RUNNING
    assert sized_note(record).startswith(f"throttle {LIMIT}% ")
    assert "capped by max_slowdown" in sized_note(record)
    # QEMU's rule raises the throttle a step a pass; the engine ends it at the first step past.
    assert any(f"throttled the guest to 40 %, beyond max_slowdown {LIMIT} %" in w
               for w in record.warnings), record.warnings  # fmt: skip


def test_a_policy_that_falls_back_moves_it_cold_at_the_limit() -> None:
    record, throttles = run("cold-fallback", LIMIT)
    assert (record.phase, record.vm_host, record.mode) == (
        Phase.COMPLETED,
        "b",
        vmmove.MigrationMode.COLD,
    )
    assert min(throttles) == LIMIT
    fallback = next(s for s in record.steps if s.step.endswith("cold-fallback"))
    assert fallback.applied
    assert f"beyond max_slowdown {LIMIT} %" in fallback.reason
    phases = [t.phase for t in record.history]
    cold = phases.index(Phase.REQUESTING, phases.index(Phase.REQUESTING) + 1)
    assert Phase.TRANSFERRING in phases[:cold]
    # Early: the policy's own trigger is 80 % of a 300 s budget.
    assert record.history[cold].at - record.created_at < 0.8 * 300 / 4


@pytest.mark.parametrize(
    ("policy", "ends"),
    [
        ("balanced", "the migration fails"),
        ("cold-fallback", "ends at budget>=80% -> cold-fallback"),
    ],
)
def test_the_predictor_foresees_the_limit(policy: str, ends: str) -> None:
    conn = estate()
    free = conn.predict("v", to="b", policy=policy, allow_postcopy=False)
    assert free.converges
    limited = conn.predict("v", to="b", policy=policy, allow_postcopy=False, max_slowdown=LIMIT)
    assert not limited.converges
    assert any(f"max_slowdown {LIMIT} %" in b and ends in b for b in limited.basis), limited.basis
    assert limited.steps[-1].endswith("cold-fallback") == (policy == "cold-fallback")


@pytest.mark.parametrize("bad", [0, 100, -5, True, 30.5, "30"])
def test_a_bad_limit_is_refused_and_changes_nothing(bad: Any) -> None:
    conn = estate()
    with pytest.raises(vmmove.InvalidInput, match="max_slowdown"):
        conn.migrate("v", to="b", max_slowdown=bad)
    assert conn.vm("v").host == "a"
    assert not conn.migrations()


def test_a_backend_that_cannot_hold_it_says_so_at_precheck() -> None:
    conn = estate()
    caps = conn.backend.capabilities
    conn.backend.capabilities = dataclasses.replace(caps, max_slowdown=False)
    problems = conn.check("v", to="b", max_slowdown=LIMIT)
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "max_slowdown is not supported by this backend; ignored")
    ]


def test_the_queue_keeps_every_field_of_the_spec() -> None:
    spec = vmmove.MigrationSpec(
        vm="v", target="b", mode=vmmove.MigrationMode.LIVE, policy="cold-fallback", bandwidth=100,
        max_downtime=400, completion_budget_per_gib=20.0, stall_timeout=30.0,
        datastore="ds", allow_postcopy=False, max_slowdown=LIMIT,
    )  # fmt: skip
    assert all(getattr(spec, f.name) is not None for f in dataclasses.fields(spec))
    body = spec_body(spec)
    assert Item(id="i", vm="v", spec={**body, "target": "b"}).migration_spec() == spec
    # An item queued by a newer version, with a key this one does not know: the rest stands.
    newer = Item(id="i", vm="v", spec={**body, "target": "b", "colour": "blue"})
    assert newer.migration_spec() == spec


def test_adapt_starts_every_auto_converge_within_the_limit() -> None:
    """Some platforms take the first throttle only when the job starts (libvirt): the policy
    they are given already keeps to the limit."""
    steps = (
        Step(trigger=AtIteration(n=2), action=AutoConverge(initial=60, increment=15)),
        Step(trigger=AtIteration(n=3), action=AutoConverge()),
        Step(trigger=AtIteration(n=4), action=ForceConvergence()),
    )
    own = Policy(name="own", steps=steps)
    actions = [s.action for s in adapt(own, allow_postcopy=False, postcopy=True).steps]
    assert actions[:2] == [s.action for s in steps[:2]]
    limited = adapt(own, allow_postcopy=False, postcopy=True, max_slowdown=15)
    assert [s.action for s in limited.steps] == [
        AutoConverge(initial=15, increment=15),
        AutoConverge(initial=15),  # QEMU's own 20 would already pass it
        AutoConverge(initial=15, sized=True),  # the most the sizing may choose
    ]
    assert adapt(own, allow_postcopy=False, postcopy=True, max_slowdown=15) is limited
    # A limit above QEMU's own start does not raise it: it only ever lowers a throttle.
    loose = adapt(own, allow_postcopy=False, postcopy=True, max_slowdown=90)
    assert [s.action for s in loose.steps] == [
        AutoConverge(initial=60, increment=15),
        AutoConverge(initial=20),
        AutoConverge(initial=20, sized=True),
    ]


def test_metrics_name_the_action_without_its_settings() -> None:
    assert action_of("dirty-rate>=80%-of-transfer -> auto-converge(sized)") == "auto-converge"
    assert action_of("iteration>=2 -> auto-converge(30%+10%)") == "auto-converge"
    assert action_of("dirty-rate>=80%-of-transfer -> compress") == "compress"
    assert action_of("iteration>=2 -> downtime=500ms") == "downtime"
