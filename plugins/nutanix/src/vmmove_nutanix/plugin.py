"""Registers ``nutanix://`` (and ``nutanix+v2://``) through vmmove's ``vmmove_add_backends``
hook. Light on purpose: ``requests`` loads when a connection is made."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import Backend
from vmmove.hookspecs import hookimpl
from vmmove.plugins import BackendRegistry
from vmmove_nutanix.capabilities import CAPABILITIES
from vmmove_nutanix.options import OPTIONS


def _factory(uri: str, options: Mapping[str, Any]) -> Backend:
    """``options``: parsed by the core against :data:`OPTIONS`."""
    from vmmove_nutanix.backend import NutanixBackend  # noqa: PLC0415 (load on connect)

    return NutanixBackend(uri, options)


@hookimpl
def vmmove_add_backends(registry: BackendRegistry) -> None:
    registry.add(
        "nutanix",
        _factory,
        description="Nutanix AHV through Prism: nutanix://[USER@]PRISM[:9440] "
        "(v4, else v2.0), nutanix+v2://[USER@]PRISM-ELEMENT[:9440] (v2.0 only)",
        capabilities=CAPABILITIES,
        options=OPTIONS,
    )
