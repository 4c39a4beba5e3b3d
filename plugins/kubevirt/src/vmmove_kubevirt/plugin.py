"""Registers ``kubevirt://`` through vmmove's ``vmmove_add_backends`` hook, and a placement
filter that keeps the engine from choosing a node a VMI's nodeSelector excludes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import Backend
from vmmove.hookspecs import hookimpl
from vmmove.model import HostInfo, VMInfo
from vmmove.placement import PlacementContext, PlacementRegistry
from vmmove.plugins import BackendRegistry
from vmmove_kubevirt.capabilities import CAPABILITIES
from vmmove_kubevirt.options import OPTIONS


def _factory(uri: str, options: Mapping[str, Any]) -> Backend:
    """``options``: parsed by the core against :data:`OPTIONS`."""
    from vmmove_kubevirt.backend import KubeVirtBackend  # noqa: PLC0415 (load on connect)

    return KubeVirtBackend(uri, options)


@hookimpl
def vmmove_add_backends(registry: BackendRegistry) -> None:
    registry.add(
        "kubevirt",
        _factory,
        description="KubeVirt through the Kubernetes API (kubevirt://CONTEXT/NAMESPACE)",
        capabilities=CAPABILITIES,
        options=OPTIONS,
    )


def node_selector(vm: VMInfo, host: HostInfo, ctx: PlacementContext) -> str | None:
    """Refuse a node that lacks a label of the VMI's nodeSelector (KubeVirt VMs and nodes
    only: they carry ``node_selector`` and ``kubernetes.io/hostname`` in ``extra``)."""
    wanted = vm.extra.get("node_selector")
    if not wanted or "kubernetes.io/hostname" not in host.extra:
        return None
    have = set(filter(None, host.extra.get("node_labels", "").split(",")))
    # A kubernetes.io/hostname pin is what a cold move changes; for a live move the
    # backend's pre-check refuses it with the reason.
    missing = [
        pair
        for pair in wanted.split(",")
        if pair not in have and not pair.startswith("kubernetes.io/hostname=")
    ]
    return f"lacks nodeSelector {', '.join(missing)}" if missing else None


@hookimpl
def vmmove_add_placement(registry: PlacementRegistry) -> None:
    registry.add_filter("kubevirt-node-selector", node_selector)
