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
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from vmmove.engine import Connection, Migration
from vmmove.errors import (
    Conflict,
    InvalidInput,
    MigrationCancelled,
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
    Policy,
    PostCopy,
    SetBandwidth,
    SetDowntime,
    Step,
)

__all__ = ["BackendContract", "ContractSetup", "check_events"]


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


def check_events(events: list[MigrationEvent]) -> None:
    """Assert the shared invariants over a migration's events: every phase change is a
    legal transition, and progress never goes backwards and reads 100 only when done."""
    phases = [e.phase for e in events if e.kind is EventKind.PHASE]
    assert phases, "no phase events"
    assert phases[0] is Phase.PENDING, phases
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


class BackendContract:
    """Inherit this in a backend's tests; provide the ``contract_setup`` fixture."""

    @pytest.fixture
    def setup(self, contract_setup: ContractSetup) -> ContractSetup:
        return contract_setup

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
        m = conn.migrate(vm.id, to=vm.host)
        with pytest.raises(PrecheckFailed) as info:
            m.wait(setup.timeout)
        assert any(p.code == "same-host" for p in info.value.problems)
        assert m.record.phase is Phase.FAILED
        assert m.record.vm_host == vm.host
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
        check_events(events)
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert record.vm_host == target.id
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
        check_events(events)
        assert first.record.done
        assert conn.vm(vm.id).host == first.record.vm_host

    def test_cancel_before_commit_leaves_vm_on_source(self, setup: ContractSetup) -> None:
        conn = setup.connection
        vm = conn.vm(setup.slow_vm or setup.running_vm)
        m = conn.migrate(vm.id, to=setup.target, mode=MigrationMode.LIVE)
        events: list[MigrationEvent] = []
        for event in m.events(timeout=setup.timeout):
            events.append(event)
            if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
                assert m.cancel() is True
        check_events(events)
        with pytest.raises(MigrationCancelled) as info:
            m.wait(0)
        assert m.record.phase is Phase.CANCELLED
        assert info.value.vm_host == vm.host == m.record.vm_host
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
        check_events(_collect(m, setup.timeout))
        record = m.wait(0)
        target = conn.host(setup.target).id
        assert record.phase is Phase.COMPLETED
        assert record.vm_host == target
        after = conn.vm(vm.id)
        assert (after.host, after.power) == (target, PowerState.STOPPED)

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
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert len(record.steps) == 4, record.steps
        assert all(not s.applied and "lacks" in s.reason for s in record.steps)
