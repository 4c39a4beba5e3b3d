"""The Hyper-V backend passes vmmove's backend contract on the emulated fabric, in both
output shapes (Windows PowerShell 5.1 and PowerShell 7)."""

from __future__ import annotations

from typing import Any

import pytest

from vmmove.store import RecordStore
from vmmove.testing.contract import BackendContract, ContractSetup
from vmmove_hyperv.testing.emulation import HyperVShell
from vmmove_hyperv.testing.fabric import Fabric


class TestHyperVContract(BackendContract):
    @pytest.fixture
    def contract_setup(self, fabric: Fabric, shape: str, connect: Any) -> ContractSetup:
        shell = HyperVShell(fabric, shape)

        def fail_cold_step(vm: str, step: str) -> None:
            if step == "move":
                fabric.fail_job(vm)  # the relocation's job ends in state 10
            else:
                fabric.fail_power_on(vm)  # RequestStateChange(2) answers 32768

        def reconnect(store: RecordStore) -> Any:
            return connect(shell, store=store)

        return ContractSetup(
            connection=connect(shell),
            running_vm="web-1",
            target="hv2",
            stopped_vm="batch-1",
            slow_vm="db-1",
            timeout=60,
            reconnect=reconnect,
            fail_cold_step=fail_cold_step,
        )
