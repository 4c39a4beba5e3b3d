"""The vSphere backend passes vmmove's backend contract on the simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vmmove.engine import Connection
from vmmove.testing.contract import BackendContract, ContractSetup


class TestVSphereContract(BackendContract):
    @pytest.fixture
    def contract_setup(
        self, estate: Any, connect_to: Callable[..., Connection]
    ) -> Iterator[ContractSetup]:
        # Three VMs of cluster DC0_C0; the target is in the other cluster, so every move
        # here also crosses clusters (target host plus DC0_C1's resource pool).
        estate.power_off("DC0_C0_RP0_VM1")
        estate.set_extra("DC0_C0_RP0_VM2", "vmmove.migrateDuration", "2.5s")
        with connect_to(estate.sim) as conn:

            def fail_cold_step(vm: str, step: str) -> None:
                # The simulator's one-shot directives: the next move of the VM fails at 50 %,
                # or its next PowerOnVM_Task ends in error (the VM stays off).
                name = conn.vm(vm).name
                if step == "start":
                    estate.set_extra(name, "vmmove.powerOn", "fail:InsufficientResourcesFault")
                else:
                    estate.set_extra(name, "vmmove.inject", "fail@50:MigrationFault:contract")

            yield ContractSetup(
                connection=conn,
                running_vm="DC0_C0_RP0_VM0",
                target="DC0_C1_H1",
                stopped_vm="DC0_C0_RP0_VM1",
                slow_vm="DC0_C0_RP0_VM2",
                timeout=60.0,
                reconnect=lambda store: connect_to(estate.sim, store=store),
                fail_cold_step=fail_cold_step,
            )
