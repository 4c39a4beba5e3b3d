"""Registers ``vsphere://`` through the ``vmmove_add_backends`` hook (entry point group
``vmmove``, name ``vsphere``) with its options as data (:data:`vmmove_vsphere.options.OPTIONS`).
Importing this module imports neither pyVmomi nor the backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import Backend, Capabilities
from vmmove.hookspecs import hookimpl
from vmmove.plugins import BackendRegistry
from vmmove_vsphere.options import OPTIONS

__all__ = ["CAPABILITIES", "vmmove_add_backends"]

#: What the backend declares (``VSphereBackend.capabilities``); here so that listing the
#: installed backends imports neither pyVmomi nor the backend.
CAPABILITIES = Capabilities(
    live=True,
    cold=True,
    cancel=True,
    postcopy=False,
    max_downtime=False,
    bandwidth=False,
    auto_converge=False,
    progress_bytes=False,
    reserve=False,
    storage_move=True,
    choose_target=True,
    relocate_stopped=True,  # cold moves: the core drives power_off/relocate/power_on
)


def _factory(uri: str, options: Mapping[str, Any]) -> Backend:
    """``options``: already parsed by the core from :data:`OPTIONS`."""
    from vmmove_vsphere.backend import VSphereBackend  # noqa: PLC0415 (load on first connect)

    return VSphereBackend.from_uri(uri, options)


@hookimpl
def vmmove_add_backends(registry: BackendRegistry) -> None:
    registry.add(
        "vsphere",
        _factory,
        description="VMware vSphere (vCenter) through pyVmomi: vsphere://user@vcenter/Datacenter",
        capabilities=CAPABILITIES,
        options=OPTIONS,
        passthrough=(),  # a vsphere:// URI's query holds options only
    )
