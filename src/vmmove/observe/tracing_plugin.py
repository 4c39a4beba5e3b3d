"""The tracing plugin, under the ``otel`` entry point: loaded with every plugin, it imports
opentelemetry at the first migration event, and does nothing at all where the
``vmmove[otel]`` extra is not installed. Block it with ``VMMOVE_BLOCK_PLUGINS=otel``."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from vmmove.hookspecs import hookimpl

if TYPE_CHECKING:
    from vmmove.events import MigrationEvent

__all__ = ["vmmove_migration_event"]

log = logging.getLogger(__name__)

_available: bool | None = None  # is opentelemetry-api installed? asked once


@hookimpl
def vmmove_migration_event(event: MigrationEvent) -> None:
    global _available  # noqa: PLW0603 (a flag set once; a race sets it twice, the same)
    if _available is None:
        _available = _installed()
    if not _available:
        return
    try:
        from vmmove.observe.tracing import tracker  # noqa: PLC0415 (only when used)

        tracker().observe(event)
    except Exception:  # an observer never breaks a migration
        log.exception("vmmove tracing: could not record an event")


def _installed() -> bool:
    """Whether opentelemetry-api is importable. ``find_spec`` of a submodule imports its
    package first, and raises when the package itself is missing."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ImportError:
        return False
