"""Registers the libvirt backend under ``qemu`` (so ``qemu+tcp``, ``qemu+ssh``... too) and
``libvirt``. Nothing here imports libvirt: that waits for the first connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import Backend, Capabilities
from vmmove.hookspecs import hookimpl
from vmmove.plugins import BackendRegistry
from vmmove_libvirt.config import OPTIONS, PASSTHROUGH

CAPABILITIES = Capabilities(
    live=True,
    cold=True,
    cancel=True,
    postcopy=True,
    max_downtime=True,
    bandwidth=True,
    auto_converge=True,
    compression=True,  # XBZRLE (COMPRESSED, armed at start)
    max_slowdown=True,  # jobStats carries auto_converge_throttle
    progress_bytes=True,
    reserve=False,
    storage_move=True,
    choose_target=True,
    # cold moves are the core's: power_off / relocate / power_on (vmmove.cold)
    relocate_stopped=True,
)


def _factory(uri: str, options: Mapping[str, Any]) -> Backend:
    from vmmove_libvirt.backend import LibvirtBackend  # noqa: PLC0415 (libvirt loads on connect)

    return LibvirtBackend.from_uri(uri, options)


@hookimpl
def vmmove_add_backends(registry: BackendRegistry) -> None:
    registry.add(
        "qemu",
        _factory,
        description="libvirt QEMU/KVM hosts: qemu+tcp://h1,h2/system (one URI, several hosts)",
        capabilities=CAPABILITIES,
        options=OPTIONS,
        passthrough=PASSTHROUGH,
    )
    registry.add(
        "libvirt",
        _factory,
        description="a named libvirt cluster: libvirt://NAME with hosts='URI URI ...'",
        capabilities=CAPABILITIES,
        options=OPTIONS,
        passthrough=PASSTHROUGH,
    )
