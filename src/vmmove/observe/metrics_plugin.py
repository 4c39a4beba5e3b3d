"""The metrics plugin, under the ``metrics`` entry point: loaded with every plugin, it
imports prometheus_client at the first migration event, and does nothing at all where the
``vmmove[metrics]`` extra is not installed. Block it with ``VMMOVE_BLOCK_PLUGINS=metrics``."""

from __future__ import annotations

import importlib.util
import logging
import threading
from typing import TYPE_CHECKING

from vmmove.hookspecs import hookimpl

if TYPE_CHECKING:
    from vmmove.events import MigrationEvent
    from vmmove.observe.metrics import LiveFeed

__all__ = ["feed", "vmmove_migration_event"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_feed: LiveFeed | None = None
_available: bool | None = None  # is prometheus_client installed? asked once


def feed() -> LiveFeed | None:
    """The process-wide feed into prometheus_client's default registry (``None`` without
    the extra). Created on first use: the families exist, at zero, from then on."""
    global _feed, _available  # noqa: PLW0603 (one feed per process, behind a lock)
    with _lock:
        if _available is None:
            _available = importlib.util.find_spec("prometheus_client") is not None
        if _feed is None and _available:
            from prometheus_client import REGISTRY  # noqa: PLC0415 (only when used)

            from vmmove.observe.metrics import LiveFeed, Recorder  # noqa: PLC0415

            _feed = LiveFeed(Recorder(REGISTRY))
        return _feed


@hookimpl
def vmmove_migration_event(event: MigrationEvent) -> None:
    try:
        live = feed()
        if live is not None:
            live.observe(event)
    except Exception:  # an observer never breaks a migration
        log.exception("vmmove metrics: could not record an event")
