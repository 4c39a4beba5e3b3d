"""The KubeVirt backend passes vmmove's backend contract against the fake cluster, on both
migrationState shapes: 1.7 (``completed`` stays false on failure) and 1.9 (``completed``
with ``failed``).

Not on 1.5: the kit always names the target node, which KubeVirt before 1.6 cannot be told
(no ``spec.addedNodeSelector``: a named target is refused), and 1.5's migrationState shape
is 1.9's. test_live, test_cold and test_variants run 1.5 as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.engine import Connection
from vmmove.store import RecordStore
from vmmove.testing.contract import BackendContract, ContractSetup
from vmmove_kubevirt.testing import FakeKube


@pytest.mark.releases("1.7", "1.9")
class TestKubeVirtContract(BackendContract):
    @pytest.fixture
    def contract_setup(self, make_kube: Any, tmp_path: Path) -> Iterator[ContractSetup]:
        kube: FakeKube = make_kube()
        kubeconfig = str(kube.kubeconfig(tmp_path / "kubeconfig"))
        opened: list[Connection] = []

        def fail_cold_step(vm: str, step: str) -> None:
            # An admission webhook that refuses, once, the VM's new node pin ("move": the
            # patch that carries the request id) or its start ("start"); the rest goes through.
            body = {"move": "vmmove.io/request-id", "start": '"running": ?true'}[step]
            kube.api_fault(
                method="PATCH",
                path=f"virtualmachines/{vm}$",
                body=body,
                status=403,
                message=f"admission webhook denied the request (injected: {step})",
            )

        def reconnect(store: RecordStore) -> Connection:
            again = vmmove.connect(
                "kubevirt://fake/default", kubeconfig=kubeconfig, store=store, poll_interval=0.1
            )
            opened.append(again)
            return again

        with vmmove.connect(
            "kubevirt://fake/default", kubeconfig=kubeconfig, poll_interval=0.1
        ) as conn:
            yield ContractSetup(
                connection=conn,
                running_vm="web-1",
                target="node-b",
                stopped_vm="batch-1",
                slow_vm="db-1",
                timeout=60,
                reconnect=reconnect,
                fail_cold_step=fail_cold_step,
            )
        for again in opened:
            again.close()
