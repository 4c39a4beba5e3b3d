"""The KubeVirt backend passes vmmove's backend contract against the fake cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmmove
from vmmove.testing.contract import BackendContract, ContractSetup
from vmmove.testing.kube import FakeKube


class TestKubeVirtContract(BackendContract):
    @pytest.fixture
    def contract_setup(self, kube: FakeKube, kubeconfig: Path) -> Iterator[ContractSetup]:
        with vmmove.connect("kubevirt://fake/default", kubeconfig=str(kubeconfig)) as conn:
            yield ContractSetup(
                connection=conn,
                running_vm="web-1",
                target="node-b",
                stopped_vm="batch-1",
                slow_vm="db-1",
                timeout=60,
            )
