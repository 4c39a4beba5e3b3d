"""The backend contract: what every vmmove backend must do, as pytest tests.

A backend's test module subclasses :class:`BackendContract` and provides one fixture::

    import pytest
    from vmmove.testing.contract import BackendContract, ContractSetup

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def contract_setup(self):
            conn = vmmove.connect("mine://...")
            yield ContractSetup(connection=conn, running_vm="vm-1", target="host-2")
            conn.close()

The fixture runs once per test and must hand out the same estate each time (fresh, or
put back). Optional fields unlock the tests that need them; without them those tests
are skipped with the reason, never passed silently.

The kit judges the backend itself, not only what users see: a :class:`Witness` records the
backend's raw ``poll`` stream (before the engine smooths it) and every test that migrates
fails, naming the rule, when phases go backwards, the backend's own progress falls, an
abort before the commit point is ignored, a terminal report disagrees with ``locate()`` or
changes, or ``locate()`` names a host that does not exist. Other tests make the platform's
answers lie or get lost (a start whose answer never arrives, a job report contradicted by
the inventory, a client that dies mid-migration): the record must stay true.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from vmmove.backend import Job, JobStatus
from vmmove.engine import Connection, Migration
from vmmove.errors import (
    Conflict,
    ConnectionFailed,
    InvalidInput,
    MigrationCancelled,
    MigrationFailed,
    NotFound,
    PrecheckFailed,
    ReservationRefused,
)
from vmmove.events import EventKind, MigrationEvent
from vmmove.machine import TRANSITIONS, Phase
from vmmove.model import MigrationMode, PowerState
from vmmove.policy import (
    AutoConverge,
    BudgetShare,
    ColdFallback,
    Policy,
    PostCopy,
    SetBandwidth,
    SetDowntime,
    Step,
)
from vmmove.store import RecordStore
from vmmove.testing.witness import ContractViolation, Witness

__all__ = ["BackendContract", "ContractSetup", "ContractViolation", "Witness", "check_events"]


@dataclass(kw_only=True)
class ContractSetup:
    connection: Connection
    #: a running, live-migratable VM, and a host that can take it
    running_vm: str
    target: str
    #: a powered-off VM for cold migration (``None`` skips the cold test)
    stopped_vm: str | None = None
    #: a VM whose live migration lasts long enough to cancel mid-transfer (default: running_vm)
    slow_vm: str | None = None
    #: arrange that the target refuses the next reservation for ``(vm, host)``
    refuse_reservation: Callable[[str, str], None] | None = None
    #: seconds (of the connection's clock) any one migration may take
    timeout: float = 900.0
    #: a new connection to the same estate over ``store`` (a client that starts again after
    #: the first one died); ``None`` skips the attach test
    reconnect: Callable[[RecordStore], Connection] | None = None
    #: ``fail_cold_step(vm, step)``: make the next cold move of ``vm`` fail at ``step``
    #: (``"move"``: moving the stopped VM fails; ``"start"``: it will not start on the
    #: target); ``None`` skips those tests
    fail_cold_step: Callable[[str, str], None] | None = None
    #: set by the kit: the witness of the backend's raw reports
    witness: Witness = field(init=False, repr=False)


def check_events(events: list[MigrationEvent], *, first: Phase | None = Phase.PENDING) -> None:
    """Assert the shared invariants over a migration's events: every phase change is a
    legal transition, and progress never goes backwards and reads 100 only when done.
    ``first`` is the phase the events must begin with (``None``: any, after attach)."""
    phases = [e.phase for e in events if e.kind is EventKind.PHASE]
    assert phases, "no phase events"
    assert first is None or phases[0] is first, phases
    for before, after in itertools.pairwise(phases):
        assert after in TRANSITIONS[before], f"illegal {before} -> {after}"
    last = -1.0
    for event in events:
        if event.progress is None:
            continue
        pct = event.progress.percent
        assert pct >= last, f"progress went back from {last} to {pct}"
        assert pct < 100 or event.phase is Phase.COMPLETED, f"{pct}% while {event.phase}"
        last = pct


def _collect(m: Migration, timeout: float) -> list[MigrationEvent]:
    return list(m.events(timeout=timeout))


def _until_phase(m: Migration, phase: Phase, timeout: float) -> list[MigrationEvent]:
    """Events up to the first entry into ``phase`` (all of them if it never comes)."""
    events: list[MigrationEvent] = []
    for event in m.events(timeout=timeout):
        events.append(event)
        if event.kind is EventKind.PHASE and event.phase is phase:
            break
    return events


class BackendContract:
    """Inherit this in a backend's tests; provide the ``contract_setup`` fixture."""

    @pytest.fixture
    def setup(self, contract_setup: ContractSetup) -> Iterator[ContractSetup]:
        witness = Witness(contract_setup.connection.backend).install()
        contract_setup.witness = witness
        try:
            yield contract_setup
        finally:
            witness.remove()

    # ---- inventory -------------------------------------------------------------------------
    def test_inventory(self, setup: ContractSetup) -> None:
        conn = setup.connection
        hosts = conn.hosts()
        assert len(hosts) >= 2, "the contract needs at least two hosts"
        host_ids = {h.id for h in hosts}
        assert len(host_ids) == len(hosts), "host ids must be unique"
        vms = conn.vms()
        assert len({v.id for v in vms}) == len(vms), "VM ids must be unique"
        for vm in vms:
            assert vm.host in host_ids, f"{vm.name} is on unknown host {vm.host}"
            assert vm.memory > 0
            assert vm.vcpus > 0
        for host in hosts:
            assert host.capacity.memory > 0
            assert host.capacity.cpus > 0
        running = conn.vm(setup.running_vm)
        assert running.power is PowerState.RUNNING
        assert conn.host(setup.target).id in host_ids

    def test_lookup_by_id_and_name(self, setup: ContractSetup) -> None:
        conn = setup.connection
        vm = conn.vm(setup.running_vm)
        assert conn.vm(vm.id) == vm
        assert conn.vm(vm.name).id == vm.id
        host = conn.host(setup.target)
        assert conn.host(host.name).id == host.id

    # ---- refusals change nothing -----------------------------------------------------------
    def test_unknown_vm_is_refused(self, setup: ContractSetup) -> None:
        before = setup.connection.vms()
        with pytest.raises(NotFound):
            setup.connection.migrate("no-such-vm-4f1c", to=setup.target)
        assert setup.connection.vms() == before

    def test_unknown_host_is_refused(self, setup: ContractSetup) -> None:
        with pytest.raises(NotFound):
            setup.connection.migrate(setup.running_vm, to="no-such-host-4f1c")
        assert setup.connection.migrations() == []

    def test_bad_options_are_refused(self, setup: ContractSetup) -> None:
        conn = setup.connection
        with pytest.raises(InvalidInput):
            conn.migrate(setup.running_vm, to=setup.target, mode="teleport")
        with pytest.raises(InvalidInput):
            conn.migrate(setup.running_vm, to=setup.target, policy="no-such-policy")
        with pytest.raises(InvalidInput):
            conn.migrate(setup.running_vm, to=setup.target, max_downtime=-5)
        assert conn.migrations() == []

    def test_same_host_is_refused(self, setup: ContractSetup) -> None:
        conn = setup.connection
        vm = conn.vm(setup.running_vm)
        with pytest.raises(PrecheckFailed) as info:
            conn.migrate(vm.id, to=vm.host)
        assert any(p.code == "same-host" for p in info.value.problems)
        assert conn.migrations() == [], "refused at migrate(): no record is written"
        assert conn.vm(vm.id).host == vm.host

    def test_live_migration_of_stopped_vm_is_refused(self, setup: ContractSetup) -> None:
        if setup.stopped_vm is None:
            pytest.skip("no stopped VM in this setup")
        conn = setup.connection
        vm = conn.vm(setup.stopped_vm)
        m = conn.migrate(vm.id, to=setup.target, mode=MigrationMode.LIVE)
        with pytest.raises(PrecheckFailed):
            m.wait(setup.timeout)
        assert conn.vm(vm.id).host == vm.host
        assert conn.vm(vm.id).power is PowerState.STOPPED

    # ---- migrations ------------------------------------------------------------------------
    def test_live_migration(self, setup: ContractSetup) -> None:
        conn = setup.connection
        vm = conn.vm(setup.running_vm)
        target = conn.host(setup.target)
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE)
        events = _collect(m, setup.timeout)
        setup.witness.check()
        check_events(events)
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert record.vm_host == target.id
        assert record.located_at is not None, "the location was read from the inventory"
        assert record.source == vm.host
        assert m.progress.percent == 100
        moved = conn.vm(vm.id)
        assert moved.host == target.id
        assert moved.power is PowerState.RUNNING

    def test_second_migration_of_a_vm_conflicts(self, setup: ContractSetup) -> None:
        conn = setup.connection
        vm = conn.vm(setup.slow_vm or setup.running_vm)
        first = conn.migrate(vm.id, to=setup.target)
        with pytest.raises(Conflict):
            conn.migrate(vm.id, to=setup.target)
        first.cancel()
        events = _collect(first, setup.timeout)
        setup.witness.check()
        check_events(events)
        assert first.record.done
        assert conn.vm(vm.id).host == first.record.vm_host

    def test_cancel_before_commit_leaves_vm_on_source(self, setup: ContractSetup) -> None:
        conn = setup.connection
        vm = conn.vm(setup.slow_vm or setup.running_vm)
        m = conn.migrate(vm.id, to=setup.target, mode=MigrationMode.LIVE)
        events: list[MigrationEvent] = []
        can_cancel = conn.capabilities.cancel
        for event in m.events(timeout=setup.timeout):
            events.append(event)
            if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
                # A platform that cannot abort a started job says so; nothing is pretended.
                assert m.cancel() is can_cancel
        setup.witness.check()
        check_events(events)
        if not can_cancel:
            record = m.wait(0)
            refusals = [w for w in record.warnings if w.startswith("cancel refused")]
            assert refusals, record.warnings
            assert conn.backend.cancel_refusal in refusals[0]
            assert record.vm_host == conn.vm(vm.id).host  # wherever it ended: the truth
            return
        with pytest.raises(MigrationCancelled) as info:
            m.wait(0)
        assert m.record.phase is Phase.CANCELLED
        assert info.value.vm_host == vm.host == m.record.vm_host
        before = [
            e.progress.percent
            for e in events
            if e.progress is not None and e.phase is not Phase.CANCELLED
        ]
        assert m.progress.percent == max(before), "a cancelled migration keeps its percentage"
        after = conn.vm(vm.id)
        assert after.host == vm.host
        assert after.power is PowerState.RUNNING

    def test_refused_reservation_leaves_vm_untouched(self, setup: ContractSetup) -> None:
        if setup.refuse_reservation is None:
            pytest.skip("this setup cannot make a target refuse a reservation")
        conn = setup.connection
        if not conn.capabilities.reserve:
            pytest.fail("refuse_reservation given, but the backend declares no `reserve`")
        vm = conn.vm(setup.running_vm)
        target = conn.host(setup.target)
        setup.refuse_reservation(vm.id, target.id)
        m = conn.migrate(vm.id, to=target.id)
        events = _collect(m, setup.timeout)
        check_events(events)
        with pytest.raises(ReservationRefused):
            m.wait(0)
        assert Phase.TRANSFERRING not in [e.phase for e in events]
        assert m.record.vm_host == vm.host
        after = conn.vm(vm.id)
        assert (after.host, after.power) == (vm.host, PowerState.RUNNING)

    def test_cold_migration(self, setup: ContractSetup) -> None:
        if setup.stopped_vm is None:
            pytest.skip("no stopped VM in this setup")
        conn = setup.connection
        if not conn.capabilities.cold:
            pytest.skip("backend declares no cold migration")
        vm = conn.vm(setup.stopped_vm)
        m = conn.migrate(vm.id, to=setup.target, mode=MigrationMode.COLD)
        events = _collect(m, setup.timeout)
        setup.witness.check()
        check_events(events)
        record = m.wait(0)
        target = conn.host(setup.target).id
        assert record.phase is Phase.COMPLETED
        assert record.vm_host == target
        after = conn.vm(vm.id)
        assert (after.host, after.power) == (target, PowerState.STOPPED)

    def test_cold_migration_of_a_running_vm(self, setup: ContractSetup) -> None:
        conn = setup.connection
        if not conn.capabilities.cold:
            pytest.skip("backend declares no cold migration")
        vm = conn.vm(setup.running_vm)
        target = conn.host(setup.target)
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.COLD)
        events = _collect(m, setup.timeout)
        setup.witness.check()
        check_events(events)
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert [t.phase for t in record.history][2:] == [
            Phase.REQUESTING,  # the guest is shut down on its source
            Phase.TRANSFERRING,  # the stopped VM is moved
            Phase.SWITCHING_OVER,  # it is started on the target
            Phase.COMPLETING,
            Phase.COMPLETED,
        ]
        after = conn.vm(vm.id)
        assert (after.host, after.power) == (target.id, PowerState.RUNNING)
        assert (record.vm_host, record.vm_power) == (target.id, PowerState.RUNNING)
        assert record.figures.total_time is not None
        assert record.figures.total_time >= record.history[-1].at - record.history[3].at

    @pytest.mark.parametrize("step", ["move", "start"])
    def test_cold_failure_at_a_step_leaves_a_true_record(
        self, setup: ContractSetup, step: str
    ) -> None:
        if setup.fail_cold_step is None:
            pytest.skip("this setup cannot make a cold move fail (fail_cold_step)")
        conn = setup.connection
        vm = conn.vm(setup.running_vm)
        setup.fail_cold_step(vm.id, step)
        m = conn.migrate(vm.id, to=setup.target, mode=MigrationMode.COLD)
        events = _collect(m, setup.timeout)
        setup.witness.check()
        check_events(events)
        with pytest.raises(MigrationFailed):
            m.wait(0)
        after = conn.vm(vm.id)
        # Running on its source again, or the record says exactly where and how it is.
        assert (m.record.vm_host, m.record.vm_power) == (after.host, after.power)
        if (after.host, after.power) != (vm.host, PowerState.RUNNING):
            assert any(after.power.value in w for w in m.record.warnings), m.record.warnings

    def test_cold_fallback_where_declared(self, setup: ContractSetup) -> None:
        conn = setup.connection
        caps = conn.capabilities
        if not (caps.cold and caps.cancel and caps.live):
            pytest.skip("cold fallback needs live, cold and cancel declared")
        vm = conn.vm(setup.slow_vm or setup.running_vm)
        target = conn.host(setup.target)
        policy = Policy(
            name="contract-fallback",
            steps=(Step(trigger=BudgetShare(share=1e-6), action=ColdFallback()),),
        )
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE, policy=policy)
        events = _collect(m, setup.timeout)
        setup.witness.check()
        check_events(events)
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert record.mode is MigrationMode.COLD
        assert any("cold" in t.note for t in record.history), record.history
        assert record.vm_host == target.id == conn.vm(vm.id).host

    def test_undeclared_policy_steps_are_skipped_not_failed(
        self, setup: ContractSetup, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conn = setup.connection
        caps = conn.backend.capabilities
        # Declare less than the backend can: the engine must skip, record, and go on.
        narrowed = dataclasses.replace(
            caps, postcopy=False, auto_converge=False, bandwidth=False, max_downtime=False
        )
        monkeypatch.setattr(conn.backend, "capabilities", narrowed)
        early = BudgetShare(share=1e-6)
        policy = Policy(
            name="contract-undeclared",
            steps=tuple(
                Step(trigger=early, action=a)
                for a in (SetDowntime(ms=900), SetBandwidth(mib_s=64), AutoConverge(), PostCopy())
            ),
        )
        vm = conn.vm(setup.slow_vm or setup.running_vm)
        m = conn.migrate(vm.id, to=setup.target, mode=MigrationMode.LIVE, policy=policy)
        check_events(_collect(m, setup.timeout))
        setup.witness.check()
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        # Steps the platform says it decides itself are recorded too; these four fired.
        fired = [s for s in record.steps if s.reason != "decided by the platform"]
        assert len(fired) == 4, record.steps
        assert all(not s.applied and "lacks" in s.reason for s in fired)

    # ---- the record stays true when answers lie or get lost ---------------------------------
    def test_attach_after_the_client_is_gone(self, setup: ContractSetup) -> None:
        if setup.reconnect is None:
            pytest.skip("this setup cannot open a second connection (reconnect)")
        conn = setup.connection
        vm = conn.vm(setup.slow_vm or setup.running_vm)
        target = conn.host(setup.target)
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE)
        _until_phase(m, Phase.TRANSFERRING, setup.timeout)
        conn.detach()  # the client dies: nothing is aborted, the platform goes on
        again = setup.reconnect(conn.store)
        try:
            m2 = again.attach(m.id)
            check_events(_collect(m2, setup.timeout), first=None)
            record = m2.wait(0)
            assert record.phase is Phase.COMPLETED
            assert record.vm_host == target.id == again.backend.locate(vm.id)
        finally:
            again.close()

    def test_lost_start_answer_is_not_a_failure(
        self, setup: ContractSetup, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conn = setup.connection
        backend = conn.backend
        real_start = backend.start
        lost: list[Job] = []

        def start_then_lose_the_answer(*args: object, **kwargs: object) -> Job:
            job = real_start(*args, **kwargs)  # type: ignore[arg-type]
            lost.append(job)
            raise ConnectionFailed("the answer to start was lost (the kit dropped it)")

        monkeypatch.setattr(backend, "start", start_then_lose_the_answer)
        vm = conn.vm(setup.running_vm)
        target = conn.host(setup.target)
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE)
        check_events(_collect(m, setup.timeout))
        setup.witness.check()
        assert lost, "the kit's start was not called"
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED, (
            "the platform acted on the request: the backend's attach(intent) must find the job "
            f"by its request_id; record: {record.error}"
        )
        assert record.vm_host == target.id == conn.vm(vm.id).host
        assert any("answer to the start request was lost" in w for w in record.warnings)

    def _lie(
        self,
        setup: ContractSetup,
        monkeypatch: pytest.MonkeyPatch,
        lie: Callable[[Job, JobStatus], JobStatus | None],
    ) -> None:
        backend = setup.connection.backend
        honest = backend.poll

        def lying_poll(job: Job) -> JobStatus:
            status = honest(job)
            return lie(job, status) or status

        monkeypatch.setattr(backend, "poll", lying_poll)

    def test_job_claims_completion_but_vm_is_on_source(
        self, setup: ContractSetup, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conn = setup.connection
        if not conn.capabilities.cancel:
            pytest.skip("the kit aborts the job behind the engine's back: needs cancel")
        backend = conn.backend
        vm = conn.vm(setup.slow_vm or setup.running_vm)
        target = conn.host(setup.target)
        aborted: list[str] = []
        lied: list[str] = []

        def lie(job: Job, status: JobStatus) -> JobStatus | None:
            if status.phase is Phase.TRANSFERRING and not aborted:
                aborted.append(job.id)
                backend.abort(job)  # the job will end on the source...
            if status.phase.terminal:  # ...and the report claims it moved
                lied.append(status.native)
                return dataclasses.replace(
                    status, phase=Phase.COMPLETED, native="lie:completed", vm_host=target.id
                )
            return None

        self._lie(setup, monkeypatch, lie)
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE)
        check_events(_collect(m, setup.timeout))
        with pytest.raises(MigrationFailed) as info:
            m.wait(0)
        record = m.record
        assert record.phase is Phase.FAILED, record.error
        assert info.value.vm_host == vm.host == record.vm_host == conn.vm(vm.id).host
        if lied:  # the job claimed completion: the record says it was contradicted
            assert any("CONTRADICTION" in w for w in record.warnings), record.warnings
        else:  # the job never ended by itself: the post-commit watchdog ended it, truly
            assert record.error is not None
            assert "no progress" in record.error, record.error

    def test_job_claims_failure_but_vm_is_on_target(
        self, setup: ContractSetup, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conn = setup.connection
        vm = conn.vm(setup.running_vm)
        target = conn.host(setup.target)

        def lie(job: Job, status: JobStatus) -> JobStatus | None:
            if status.phase is Phase.COMPLETED:
                return dataclasses.replace(
                    status,
                    phase=Phase.FAILED,
                    native="lie:failed",
                    vm_host=vm.host,
                    error="the kit says it failed",
                )
            return None

        self._lie(setup, monkeypatch, lie)
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE)
        check_events(_collect(m, setup.timeout))
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert record.vm_host == target.id == conn.vm(vm.id).host
        assert any("CONTRADICTION" in w for w in record.warnings), record.warnings
