"""Prism Element's v2.0 API (``/api/nutanix/v2.0`` or ``/PrismGateway/services/rest/v2.0``).

v2.0 has no ETags and no request ids: a lost answer to a migrate is found among the VM's
recent tasks (the same operation, the same target host, created when the request was made).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from vmmove.backend import JobRef
from vmmove.model import MigrationMode
from vmmove_nutanix.http import PrismHttp
from vmmove_nutanix.parse import (
    NativeHost,
    NativeTask,
    NativeVM,
    task_ref_v2,
    v2_host,
    v2_page,
    v2_task,
    v2_vm,
)
from vmmove_nutanix.v4 import _safe

__all__ = ["PrismV2"]

_MAX_PAGES = 10_000


class PrismV2:
    def __init__(self, http: PrismHttp, base: str, page_size: int) -> None:
        self.http = http
        self.base = base
        self.version = "v2.0"
        self.page_size = page_size

    def _pages(self, path: str) -> Iterator[Any]:
        seen = 0
        for page in range(1, _MAX_PAGES):
            body, _ = self.http.call(
                "GET", self.base + path, params={"page": page, "count": self.page_size}
            )
            got = v2_page(body)
            yield from got.items
            seen += len(got.items)
            if len(got.items) < self.page_size or (got.total is not None and seen >= got.total):
                return

    def hosts(self) -> list[NativeHost]:
        return [v2_host(doc) for doc in self._pages("/hosts/")]

    def vms(self) -> list[NativeVM]:
        return [v2_vm(doc) for doc in self._pages("/vms/")]

    def vms_named(self, name: str) -> list[NativeVM]:
        return [vm for vm in self.vms() if vm.name == name]

    def vm(self, vm_id: str) -> NativeVM:
        body, _ = self.http.call("GET", f"{self.base}/vms/{_safe(vm_id)}")
        if not isinstance(body, dict):
            body = {}
        return v2_vm(body)

    def migrate(
        self, vm_id: str, host_id: str, request_id: str, recheck: Callable[[NativeVM], None]
    ) -> str:
        recheck(self.vm(vm_id))
        body, _ = self.http.call(
            "POST", f"{self.base}/vms/{_safe(vm_id)}/migrate", body={"host_uuid": host_id}
        )
        return task_ref_v2(body)

    def power(self, vm_id: str, transition: str, request_id: str) -> str:
        body, _ = self.http.call(
            "POST",
            f"{self.base}/vms/{_safe(vm_id)}/set_power_state",
            body={"transition": transition},
        )
        return task_ref_v2(body)

    def place(self, vm_id: str, host_id: str, request_id: str) -> str:
        affinity = {"policy": "AFFINITY", "host_uuids": [host_id]}
        body, _ = self.http.call(
            "PUT", f"{self.base}/vms/{_safe(vm_id)}", body={"affinity": affinity}
        )
        return task_ref_v2(body)

    def task(self, task_id: str) -> NativeTask:
        body, _ = self.http.call("GET", f"{self.base}/tasks/{_safe(task_id)}")
        return v2_task(body if isinstance(body, dict) else {})

    def find_start(self, ref: JobRef, skew: float) -> str | None:
        """The VM's task of that kind, to that host, created nearest the request (within
        ``skew`` seconds of it, either way, for the two clocks)."""
        operation = "VmUpdate" if ref.mode is MigrationMode.COLD else "VmMigrate"
        body, _ = self.http.call(
            "POST",
            f"{self.base}/tasks/list",
            body={
                "entity_list": [{"entity_id": ref.vm}],
                "operation_type_list": [operation],
                "include_completed": True,
            },
        )
        tasks = [v2_task(doc) for doc in v2_page(body).items]
        at = ref.at
        found = [
            t
            for t in tasks
            if ref.vm in t.entities
            and ref.target in t.entities
            and t.operation == operation
            and (at is None or (t.created is not None and t.created >= at - skew))
        ]
        if not found:
            return None
        best = min(found, key=lambda t: abs((t.created or 0.0) - (at or 0.0)))
        return best.id
