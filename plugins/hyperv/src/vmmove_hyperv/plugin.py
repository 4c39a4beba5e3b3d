"""Registers ``hyperv://`` through vmmove's ``vmmove_add_backends`` hook."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import Backend
from vmmove.hookspecs import hookimpl
from vmmove.plugins import BackendRegistry
from vmmove_hyperv.capabilities import CAPABILITIES
from vmmove_hyperv.options import OPTIONS


def _factory(uri: str, options: Mapping[str, Any]) -> Backend:
    """``options``: parsed by the core against :data:`OPTIONS`."""
    from vmmove_hyperv.backend import HyperVBackend  # noqa: PLC0415 (load on connect)

    return HyperVBackend(uri, options)


@hookimpl
def vmmove_add_backends(registry: BackendRegistry) -> None:
    registry.add(
        "hyperv",
        _factory,
        description="Hyper-V hosts over WinRM (hyperv://[USER@]HOST1,HOST2[/CLUSTER])",
        capabilities=CAPABILITIES,
        options=OPTIONS,
    )
