"""Prism Central's v4 API: ``clustermgmt`` hosts, ``vmm`` VMs and actions, ``prism`` tasks.

Every mutation carries the VM's ETag (``If-Match``; a 412 means re-read, re-check, retry
once) and an ``NTNX-Request-Id`` (a replay with the same id never acts twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from vmmove.backend import JobRef
from vmmove.errors import Conflict, InvalidInput
from vmmove.model import MigrationMode
from vmmove_nutanix.api import request_uuid
from vmmove_nutanix.http import PrismHttp, StaleETag
from vmmove_nutanix.parse import (
    NativeHost,
    NativeTask,
    NativeVM,
    task_ref_v4,
    v4_data,
    v4_host,
    v4_page,
    v4_task,
    v4_vm,
)

__all__ = ["PrismV4"]

_TRANSITIONS = {"ON": "power-on", "OFF": "power-off", "ACPI_SHUTDOWN": "shutdown"}
_MAX_PAGES = 10_000
#: an ETag no VM ever has: a replay of a known request id is answered from Prism's memory,
#: an unknown one is refused (412) and so cannot act
_PROBE_ETAG = '"vmmove-replay-probe"'


class PrismV4:
    def __init__(self, http: PrismHttp, version: str, page_size: int) -> None:
        self.http = http
        self.version = version
        self.page_size = page_size
        self._vms = f"/api/vmm/{version}/ahv/config/vms"
        self._hosts = f"/api/clustermgmt/{version}/config/hosts"
        self._tasks = f"/api/prism/{version}/config/tasks"

    def _pages(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[Any]:
        seen = 0
        for page in range(_MAX_PAGES):
            query: dict[str, str | int] = {"$page": page, "$limit": self.page_size}
            query.update(params or {})
            body, _ = self.http.call("GET", path, params=query)
            got = v4_page(body)
            yield from got.items
            seen += len(got.items)
            if not got.items or (got.total is not None and seen >= got.total):
                return
            if got.total is None and len(got.items) < self.page_size:
                return

    def hosts(self) -> list[NativeHost]:
        return [v4_host(doc) for doc in self._pages(self._hosts)]

    def vms(self) -> list[NativeVM]:
        return [v4_vm(doc) for doc in self._pages(self._vms)]

    def vms_named(self, name: str) -> list[NativeVM]:
        quoted = name.replace("'", "''")  # OData string literal
        return [v4_vm(d) for d in self._pages(self._vms, {"$filter": f"name eq '{quoted}'"})]

    def _read(self, vm_id: str) -> tuple[Mapping[str, Any], str]:
        body, headers = self.http.call("GET", f"{self._vms}/{_safe(vm_id)}")
        etag = headers.get("ETag")
        if not etag:
            raise Conflict(f"Prism gave no ETag for VM {vm_id}: cannot change it safely")
        return v4_data(body), etag

    def vm(self, vm_id: str) -> NativeVM:
        return v4_vm(self._read(vm_id)[0])

    def _mutate(
        self,
        vm_id: str,
        request_id: str,
        send: Callable[[Mapping[str, Any], dict[str, str]], Any],
        recheck: Callable[[NativeVM], None] | None = None,
    ) -> str:
        headers = {"NTNX-Request-Id": request_uuid(request_id)}
        for attempt in (1, 2):
            doc, etag = self._read(vm_id)
            if recheck is not None:
                recheck(v4_vm(doc))
            try:
                return task_ref_v4(send(doc, {**headers, "If-Match": etag}))
            except StaleETag:
                if attempt == 2:
                    raise Conflict(
                        f"VM {vm_id} changed twice while vmmove was asking Prism: try again"
                    ) from None
        raise AssertionError("unreachable")

    def migrate(
        self, vm_id: str, host_id: str, request_id: str, recheck: Callable[[NativeVM], None]
    ) -> str:
        def send(doc: Mapping[str, Any], headers: dict[str, str]) -> Any:
            return self._migrate_post(vm_id, host_id, headers)

        return self._mutate(vm_id, request_id, send, recheck)

    def _migrate_post(self, vm_id: str, host_id: str, headers: dict[str, str]) -> Any:
        path = f"{self._vms}/{_safe(vm_id)}/$actions/migrate-to-host"
        return self.http.call("POST", path, body={"host": {"extId": host_id}}, headers=headers)[0]

    def power(self, vm_id: str, transition: str, request_id: str) -> str:
        path = f"{self._vms}/{_safe(vm_id)}/$actions/{_TRANSITIONS[transition]}"

        def send(doc: Mapping[str, Any], headers: dict[str, str]) -> Any:
            return self.http.call("POST", path, body={}, headers=headers)[0]

        return self._mutate(vm_id, request_id, send)

    def _place_put(
        self, vm_id: str, doc: Mapping[str, Any], host_id: str, headers: dict[str, str]
    ) -> Any:
        body = {**doc, "hostAffinity": {"hosts": [{"extId": host_id}]}}
        return self.http.call("PUT", f"{self._vms}/{_safe(vm_id)}", body=body, headers=headers)[0]

    def place(self, vm_id: str, host_id: str, request_id: str) -> str:
        def send(doc: Mapping[str, Any], headers: dict[str, str]) -> Any:
            return self._place_put(vm_id, doc, host_id, headers)

        return self._mutate(vm_id, request_id, send)

    def task(self, task_id: str) -> NativeTask:
        body, _ = self.http.call("GET", f"{self._tasks}/{_safe(task_id)}")
        return v4_task(v4_data(body))

    def find_start(self, ref: JobRef, skew: float) -> str | None:
        """Replay the request with its own ``NTNX-Request-Id`` and an ETag no VM has: Prism
        answers a request it took with the task it started, and refuses one it never saw."""
        headers = {"NTNX-Request-Id": request_uuid(ref.request_id), "If-Match": _PROBE_ETAG}
        try:
            if ref.mode is MigrationMode.COLD:
                doc, _ = self._read(ref.vm)
                body = self._place_put(ref.vm, doc, ref.target, headers)
            else:
                body = self._migrate_post(ref.vm, ref.target, headers)
        except StaleETag:
            return None
        return task_ref_v4(body)


def _safe(ident: str) -> str:
    """An id as one path segment (ids come from records and callers: never a path)."""
    if not ident or any(c in ident for c in "/?#%") or ident in (".", ".."):
        raise InvalidInput(f"{ident!r} is not a Prism id")
    return ident
