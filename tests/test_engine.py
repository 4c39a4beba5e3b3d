"""The engine's guarantees on the simulator: faults in every phase, cancels, budgets."""

from __future__ import annotations

import contextlib

import pytest

import vmmove
from vmmove import EventKind, Phase
from vmmove.policy import AtIteration, ColdFallback, Policy, Step
from vmmove.sim import Fault, parse
from vmmove.testing.contract import check_events


def estate(**vm: object) -> vmmove.Connection:
    spec = {"name": "v", "host": "a", "memory_mib": 2048, "resident_mib": 1024,
            "working_set_mib": 256, "dirty_mib_s": 50}  # fmt: skip
    spec.update(vm)
    inventory = parse(
        {"link_mib_s": 200, "host": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "vm": [spec]}
    )
    return vmmove.connect("sim://", inventory=inventory)


def finish(m: vmmove.Migration) -> vmmove.MigrationRecord:
    check_events(list(m.events()))
    return m.record


FAULT_PHASES = [Phase.REQUESTING, Phase.TRANSFERRING, Phase.SWITCHING_OVER]


@pytest.mark.parametrize("kind", ["target-fails", "link-drop"])
@pytest.mark.parametrize("phase", FAULT_PHASES)
@pytest.mark.parametrize("mode", ["live", "cold"])
def test_fault_before_commit_leaves_vm_running_on_source(
    kind: str, phase: Phase, mode: str
) -> None:
    conn = estate(power="running")
    conn.backend.inject(Fault(kind=kind, vm="v", phase=phase, after=0.05))  # type: ignore[attr-defined]
    record = finish(conn.migrate("v", to="b", mode=mode))
    assert record.phase is Phase.FAILED
    assert record.vm_host == "a"
    vm = conn.vm("v")
    assert (vm.host, vm.power) == ("a", vmmove.PowerState.RUNNING)
    assert record.vm_power is vmmove.PowerState.RUNNING
    if mode == "cold" and phase is Phase.SWITCHING_OVER:
        # The core's cold move: the VM would not start on the target, so it went back.
        assert "did not start there" in (record.error or "")
        assert any("moving it back" in w for w in record.warnings)
    else:
        assert "injected" in (record.error or "")


def test_fault_in_postcopy_is_loud() -> None:
    conn = estate()
    conn.backend.inject(Fault(kind="link-drop", vm="v", phase=Phase.POSTCOPY, after=0.01))  # type: ignore[attr-defined]
    m = conn.migrate("v", to="b", policy="minimal-downtime", bandwidth=20)
    with pytest.raises(vmmove.PostcopyFailed) as info:
        m.wait()
    assert info.value.vm_host is None
    assert m.record.vm_host is None
    assert m.record.error_type == "PostcopyFailed"


def test_fault_after_commit_completes() -> None:
    conn = estate()
    conn.backend.inject(Fault(kind="target-fails", vm="v", phase=Phase.COMPLETING, after=0.01))  # type: ignore[attr-defined]
    record = finish(conn.migrate("v", to="b"))
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "b"


@pytest.mark.parametrize(
    "phase", [Phase.PENDING, Phase.PREPARING, Phase.REQUESTING, Phase.TRANSFERRING]
)
def test_cancel_in_each_phase_before_commit(phase: Phase) -> None:
    conn = estate()
    m = conn.migrate("v", to="b")
    for event in m.events():
        if event.kind is EventKind.PHASE and event.phase is phase:
            assert m.cancel()
    assert m.record.phase is Phase.CANCELLED
    assert m.record.vm_host == "a" == conn.vm("v").host
    with pytest.raises(vmmove.MigrationCancelled):
        m.wait()


@pytest.mark.parametrize("phase", [Phase.SWITCHING_OVER, Phase.COMPLETING, Phase.COMPLETED])
def test_cancel_after_commit_is_refused_and_changes_nothing(phase: Phase) -> None:
    conn = estate(dirty_mib_s=0)
    m = conn.migrate("v", to="b")
    answers = [m.cancel() for e in m.events() if e.kind is EventKind.PHASE and e.phase is phase]
    assert answers == [False]
    assert m.record.phase is Phase.COMPLETED
    assert conn.vm("v").host == "b"


def test_budget_aborts_and_the_vm_stays() -> None:
    conn = estate(dirty_mib_s=400, working_set_mib=1024)
    m = conn.migrate("v", to="b", policy="none", completion_budget_per_gib=10)
    with pytest.raises(vmmove.MigrationTimedOut):
        m.wait()
    assert m.record.vm_host == "a"
    assert m.record.error == "completion budget exhausted"
    started = m.record.history[3].at
    assert m.record.updated_at - started == pytest.approx(20, abs=1.5)  # 10 s/GiB * max(2 GiB, 2)


def test_stall_timeout_aborts() -> None:
    conn = estate(dirty_mib_s=400, working_set_mib=1024)
    m = conn.migrate("v", to="b", policy="none", stall_timeout=12)
    with pytest.raises(vmmove.MigrationTimedOut, match="stalled"):
        m.wait()


def test_cold_fallback_moves_the_vm_cold() -> None:
    conn = estate(dirty_mib_s=400, working_set_mib=1024)
    policy = Policy(name="fb", steps=(Step(trigger=AtIteration(n=3), action=ColdFallback()),))
    m = conn.migrate("v", to="b", policy=policy)
    record = finish(m)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "b"
    assert record.mode is vmmove.MigrationMode.COLD
    phases = [t.phase for t in record.history]
    assert phases.count(Phase.REQUESTING) == 2
    assert conn.vm("v").power is vmmove.PowerState.RUNNING


def test_wait_timeout_leaves_it_running() -> None:
    conn = estate()
    m = conn.migrate("v", to="b")
    with pytest.raises(vmmove.WaitTimeout):
        m.wait(timeout=1.0)
    assert not m.done
    assert m.wait().phase is Phase.COMPLETED


def test_placement_chooses_a_target_with_reasons() -> None:
    conn = estate()
    conn.backend.set_host_state("c", vmmove.HostState.MAINTENANCE)  # type: ignore[attr-defined]
    record = conn.migrate("v").wait()
    assert record.target == "b"


def test_no_target_anywhere_is_a_precheck_failure() -> None:
    conn = estate(memory_mib=300 * 1024, resident_mib=1024)
    m = conn.migrate("v")
    with pytest.raises(vmmove.PrecheckFailed, match="needs 307200 MiB"):
        m.wait()


def test_concurrency_limit_queues() -> None:
    inventory = parse(
        {"host": [{"name": "a"}, {"name": "b"}],
         "vm": [{"name": f"v{i}", "host": "a", "memory_mib": 1024} for i in range(6)]}
    )  # fmt: skip
    conn = vmmove.connect("sim://", inventory=inventory, max_concurrent=2)
    ms = [conn.migrate(f"v{i}", to="b") for i in range(6)]
    records = conn.wait_all()
    assert all(r.phase is Phase.COMPLETED for r in records)
    spans = [(r.history[2].at, r.updated_at) for r in records]  # preparing .. done
    for t, _ in spans:
        assert sum(1 for s, e in spans if s <= t < e) <= 2
    assert len(ms) == 6


def test_a_backend_whose_phases_go_backwards_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = estate()
    backend = conn.backend
    real = backend.poll

    def poll(job):  # type: ignore[no-untyped-def]
        status = real(job)
        if status.phase is Phase.TRANSFERRING:
            from dataclasses import replace

            return replace(status, phase=Phase.PENDING, native="bogus")
        return status

    monkeypatch.setattr(backend, "poll", poll)
    m = conn.migrate("v", to="b")
    record = m.wait()  # the phases never go back; the record follows the VM
    assert record.vm_host == "b" == backend.locate("v")
    backwards = [w for w in record.warnings if "phases never go back" in w]
    assert len(backwards) == 1, record.warnings  # once, not once per poll
    assert "backend sim" in backwards[0]
    assert "'bogus'" in backwards[0]
    phases = [t.phase for t in record.history]
    assert Phase.PENDING not in phases[1:]


def test_a_dropped_connection_is_not_a_failed_migration(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = estate()
    real = conn.backend.poll
    drops = iter(range(3))

    def flaky(job):  # type: ignore[no-untyped-def]
        if next(drops, None) is not None:
            raise vmmove.ConnectionFailed("connection reset by peer")
        return real(job)

    monkeypatch.setattr(conn.backend, "poll", flaky)
    record = conn.migrate("v", to="b").wait()
    assert record.phase is Phase.COMPLETED
    assert any("lost contact" in w for w in record.warnings)


def test_an_endpoint_gone_for_good_ends_after_the_grace_where_the_vm_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = estate()
    conn.poll_grace = 30.0

    def gone(job):  # type: ignore[no-untyped-def]
        raise vmmove.ConnectionFailed("no route to host")

    monkeypatch.setattr(conn.backend, "poll", gone)
    m = conn.migrate("v", to="b")
    with contextlib.suppress(vmmove.MigrationFailed):
        m.wait()
    assert m.record.updated_at - m.record.created_at == pytest.approx(31, abs=2)
    assert any("lost contact" in w for w in m.record.warnings)
    # The job could not be followed, but the inventory could be read: the record names
    # where the VM really is, and its outcome follows it.
    assert m.record.vm_host == conn.backend.locate("v")
    assert m.record.located_at is not None
    assert (m.record.phase is Phase.COMPLETED) == (m.record.vm_host == "b")


def test_a_storage_move_needs_a_backend_that_can() -> None:
    conn = estate()
    m = conn.migrate("v", to="a", datastore="fast-ssd")
    with pytest.raises(vmmove.PrecheckFailed, match="no datastores"):
        m.wait()
    with pytest.raises(vmmove.InvalidInput):
        conn.migrate("v", to="b", datastore="")


def test_two_moves_fill_a_host_exactly() -> None:
    # 8 GiB free on b: two 4 GiB guests fit, and in-flight reservations count once.
    inventory = parse(
        {
            "host": [{"name": "a", "memory_gib": 64}, {"name": "b", "memory_gib": 8}],
            "vm": [{"name": f"v{i}", "host": "a", "memory_mib": 4096} for i in range(3)],
        }
    )
    conn = vmmove.connect("sim://", inventory=inventory)
    first, second = conn.migrate("v0", to="b"), conn.migrate("v1", to="b")
    assert first.wait().vm_host == "b"
    assert second.wait().vm_host == "b"
    third = conn.migrate("v2", to="b")
    with pytest.raises(vmmove.PrecheckFailed, match="0 MiB free"):
        third.wait()
