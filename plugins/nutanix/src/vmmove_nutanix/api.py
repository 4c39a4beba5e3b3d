"""What the backend asks of Prism, whichever API generation answers, and how the
generation is chosen: by asking the server, newest first (never guessed from the URI alone).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from vmmove.backend import JobRef
from vmmove.errors import ConnectionFailed, NotFound
from vmmove_nutanix.http import PrismHttp
from vmmove_nutanix.parse import NativeHost, NativeTask, NativeVM

__all__ = ["V2_BASES", "V4_VERSIONS", "PrismApi", "discover", "request_uuid"]

#: v4 path versions, newest first (older Prism Central releases serve the beta ones).
V4_VERSIONS = ("v4.0", "v4.0.b1", "v4.0.a1")
V2_BASES = ("/api/nutanix/v2.0", "/PrismGateway/services/rest/v2.0")
_REQUESTS = uuid.UUID("b3c1d7de-45f4-4a39-9a55-5f3f0e0e7a2b")


def request_uuid(request_id: str) -> str:
    """The ``NTNX-Request-Id`` for an engine request id: a UUID (as Prism wants), the same
    one every time for the same request, so a replay is recognised."""
    return str(uuid.uuid5(_REQUESTS, request_id))


class PrismApi(Protocol):
    version: str

    def hosts(self) -> list[NativeHost]: ...

    def vms(self) -> list[NativeVM]: ...

    def vm(self, vm_id: str) -> NativeVM: ...

    def vms_named(self, name: str) -> list[NativeVM]: ...

    def migrate(
        self, vm_id: str, host_id: str, request_id: str, recheck: Callable[[NativeVM], None]
    ) -> str:
        """Start a live migration; the task id. ``recheck`` refuses (raises) when the VM
        read just before the request no longer qualifies."""
        ...

    def power(self, vm_id: str, transition: str, request_id: str) -> str:
        """``transition``: ``ON``, ``OFF`` (hard) or ``ACPI_SHUTDOWN``; the task id."""
        ...

    def place(self, vm_id: str, host_id: str, request_id: str) -> str:
        """Pin the VM to one host (VM-host affinity); the task id."""
        ...

    def task(self, task_id: str) -> NativeTask: ...

    def find_start(self, ref: JobRef, skew: float) -> str | None:
        """The task a start (or relocate) request whose answer was lost began, if any."""
        ...


def discover(http: PrismHttp, *, v2_only: bool, page_size: int) -> PrismApi:
    """The API generation the server answers: v4 (newest path version first), else v2.0."""
    from vmmove_nutanix.v2 import PrismV2  # noqa: PLC0415 (one of the two is used)
    from vmmove_nutanix.v4 import PrismV4  # noqa: PLC0415

    if not v2_only:
        for version in V4_VERSIONS:
            try:
                http.call("GET", f"/api/clustermgmt/{version}/config/hosts", params={"$limit": 1})
            except NotFound:
                continue
            return PrismV4(http, version, page_size)
    for base in V2_BASES:
        try:
            http.call("GET", f"{base}/hosts/", params={"count": 1})
        except NotFound:
            continue
        return PrismV2(http, base, page_size)
    wanted = "v2.0" if v2_only else "v4 or v2.0"
    raise ConnectionFailed(f"{http.base_url} does not answer Prism {wanted}")
