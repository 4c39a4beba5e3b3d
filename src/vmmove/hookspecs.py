"""The hooks a vmmove plugin may implement.

A plugin is any module or object with functions marked ``@vmmove.hookimpl``, installed
under the ``vmmove`` entry-point group. The built-in simulator registers the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from vmmove.events import MigrationEvent
    from vmmove.placement import PlacementRegistry
    from vmmove.plugins import BackendRegistry
    from vmmove.policy import Policy

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("vmmove")
hookimpl = pluggy.HookimplMarker("vmmove")


@hookspec
def vmmove_add_backends(registry: BackendRegistry) -> None:
    """Register backend factories by URI scheme: ``registry.add("sim", factory, ...)``."""


@hookspec
def vmmove_add_policies() -> list[Policy]:  # type: ignore[empty-body]
    """Return extra named convergence policies (presets)."""


@hookspec
def vmmove_add_placement(registry: PlacementRegistry) -> None:
    """Register placement filters and weighers: ``registry.add_filter(...)``."""


@hookspec
def vmmove_migration_event(event: MigrationEvent) -> None:
    """Observe every migration event (phase changes, policy steps, progress, warnings).

    Called on the supervisor's thread: return quickly and never raise.
    """
