"""The Nutanix backend passes vmmove's backend contract against the fake Prism, as Prism
Central (v4.0) and as Prism Element alone (v2.0).

Nutanix migrate tasks cannot be cancelled (``cancel=False``): the kit skips the tests that
need an abort, and its cancel test checks the refusal instead (``cancel()`` answers False,
the record says why, the migration goes on).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vmmove.engine import Connection
from vmmove.errors import NotSupported
from vmmove.events import EventKind
from vmmove.machine import Phase
from vmmove.model import MigrationMode
from vmmove.store import RecordStore
from vmmove.testing.contract import BackendContract, ContractSetup
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

    def test_abort_is_not_pretended(self, setup: ContractSetup) -> None:
        """The kit's cancel test checks that cancel() answers False with the reason in the
        record; the backend's own abort refuses too, should anything call it."""
        conn = setup.connection
        assert not conn.capabilities.cancel
        assert conn.backend.cancel_refusal == NO_CANCEL
        m = conn.migrate(setup.running_vm, to=setup.target, mode=MigrationMode.LIVE)
        for event in m.events(timeout=setup.timeout):
            if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
                with pytest.raises(NotSupported, match="cannot be cancelled"):
                    conn.backend.abort(m._run.job)  # type: ignore[arg-type]
        assert m.wait(0).phase is Phase.COMPLETED
