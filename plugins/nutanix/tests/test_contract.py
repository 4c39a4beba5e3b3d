"""The Nutanix backend passes vmmove's backend contract against the fake Prism, as Prism
Central (v4.0) and as Prism Element alone (v2.0).

Nutanix migrate tasks cannot be cancelled (``cancel=False``): the kit skips the tests that
need an abort, and the cancel test is replaced by what is true here (below).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vmmove.engine import Connection
from vmmove.events import EventKind
from vmmove.machine import Phase
from vmmove.model import MigrationMode
from vmmove.store import RecordStore
from vmmove.testing.contract import BackendContract, ContractSetup, check_events
from vmmove_nutanix.backend import NO_CANCEL
from vmmove_nutanix.testing import FakePrism


class TestNutanixContract(BackendContract):
    @pytest.fixture
    def contract_setup(self, prism: FakePrism, connect: Callable[..., Connection]) -> ContractSetup:
        def fail_cold_step(vm: str, step: str) -> None:
            if step == "move":  # the VM update that pins it to the target fails as a task
                prism.state.fail_next(vm, "VmUpdate", "injected: the VM update failed")
                return
            # the target refuses to power it on (once); going back to the source works
            path = r"\$actions/power-on" if prism.api != "v2.0" else "set_power_state"
            prism.fault("POST", path, status=409, body='"ON"|{}', message="injected: no room")

        def reconnect(store: RecordStore) -> Connection:
            return connect(prism, store=store)

        conn = connect(prism)
        return ContractSetup(
            connection=conn,
            running_vm="web-1",
            target="node-b",
            stopped_vm="batch-1",
            timeout=30,
            reconnect=reconnect,
            fail_cold_step=fail_cold_step,
        )

    def test_cancel_before_commit_leaves_vm_on_source(self, setup: ContractSetup) -> None:
        """Replaced: a Nutanix migration cannot be cancelled. A cancel is not pretended:
        the migration goes on to its end, the record says why the cancel did nothing, and
        the VM is where the inventory says."""
        conn = setup.connection
        vm = conn.vm(setup.running_vm)
        target = conn.host(setup.target)
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE)
        events = []
        for event in m.events(timeout=setup.timeout):
            events.append(event)
            if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
                m.cancel()
        setup.witness.check()
        check_events(events)
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert record.vm_host == target.id == conn.vm(vm.id).host
        assert any("cannot abort" in w for w in record.warnings), record.warnings
        assert not conn.capabilities.cancel
        with pytest.raises(Exception, match="cannot be cancelled"):
            conn.backend.abort(m._run.job)  # type: ignore[arg-type]
        assert "isCancelable" in NO_CANCEL

    @pytest.mark.xfail(
        strict=True,
        reason="core: Migration.cancel() answers True when the backend declares no cancel; "
        "needs the core change described in the Nutanix report",
    )
    def test_cancel_answers_false_with_a_recorded_reason(self, setup: ContractSetup) -> None:
        conn = setup.connection
        m = conn.migrate(setup.running_vm, to=setup.target, mode=MigrationMode.LIVE)
        answered = None
        for event in m.events(timeout=setup.timeout):
            if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
                answered = m.cancel()
        assert answered is False
        assert any("cannot be cancelled" in w for w in m.record.warnings)
