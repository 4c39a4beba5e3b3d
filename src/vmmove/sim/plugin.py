"""Registers ``sim://`` through the same hook and entry point as any third-party backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import Backend
from vmmove.hookspecs import hookimpl
from vmmove.plugins import BackendRegistry


def _factory(uri: str, options: Mapping[str, Any]) -> Backend:
    from vmmove.sim.backend import SimBackend  # noqa: PLC0415 (load on first connect)

    return SimBackend.from_uri(uri, options)


def _remote_factory(uri: str, options: Mapping[str, Any]) -> Backend:
    from vmmove.sim.remote import RemoteSimBackend  # noqa: PLC0415

    return RemoteSimBackend.from_uri(uri, options)


@hookimpl
def vmmove_add_backends(registry: BackendRegistry) -> None:
    from vmmove.sim.backend import SimBackend  # noqa: PLC0415

    registry.add(
        "sim",
        _factory,
        description="built-in simulated hypervisor (virtual clock; ?speed=N for real time)",
        capabilities=SimBackend.capabilities,
    )
    registry.add(
        "sim+http",
        _remote_factory,
        description="a simulator server shared by several processes (python -m vmmove.sim serve)",
        capabilities=SimBackend.capabilities,
    )
