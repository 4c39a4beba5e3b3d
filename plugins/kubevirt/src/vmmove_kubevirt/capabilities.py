"""What the KubeVirt backend declares, importable without connecting (for ``vmmove backends``)."""

from __future__ import annotations

from vmmove.backend import Capabilities

__all__ = ["CAPABILITIES"]

#: What KubeVirt can do, declared for every cluster. ``postcopy``, ``auto_converge`` and
#: ``bandwidth`` take effect when the migration starts (through a MigrationPolicy), never
#: later: ``tune`` raises NotSupported. ``choose_target`` turns false on a connection to a
#: KubeVirt without ``spec.addedNodeSelector`` (before 1.6): the scheduler picks the node.
#: ``relocate_stopped``: a cold move is the core's, through power_off/relocate/power_on.
CAPABILITIES = Capabilities(
    live=True,
    cold=True,
    cancel=True,
    postcopy=True,
    max_downtime=False,
    bandwidth=True,
    auto_converge=True,
    progress_bytes=False,
    reserve=False,
    storage_move=False,
    choose_target=True,
    relocate_stopped=True,
)
