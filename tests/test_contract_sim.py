"""The simulator passes the backend contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import vmmove
from vmmove.machine import Phase
from vmmove.sim import Fault
from vmmove.testing.contract import BackendContract, ContractSetup


class TestSimulatorContract(BackendContract):
    @pytest.fixture
    def contract_setup(self) -> Iterator[ContractSetup]:
        with vmmove.connect("sim://") as conn:
            backend = conn.backend

            def refuse(vm: str, host: str) -> None:
                backend.inject(Fault(kind="reserve-refused", vm=vm, host=host))  # type: ignore[attr-defined]

            yield ContractSetup(
                connection=conn,
                running_vm="web-1",
                target="host-b",
                stopped_vm="batch-1",
                slow_vm="db-1",
                refuse_reservation=refuse,
                fail_cold_step=lambda vm, step: backend.inject(  # type: ignore[attr-defined]
                    Fault(
                        kind="target-fails",
                        vm=vm,
                        phase=Phase.TRANSFERRING if step == "move" else Phase.SWITCHING_OVER,
                    )
                ),
                reconnect=lambda store: vmmove.Connection(
                    backend, uri="sim://", plugins=conn.plugins, store=store
                ),
            )
