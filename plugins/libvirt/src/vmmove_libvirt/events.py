"""libvirt's default event loop, run in one daemon thread per process.

Domain events (lifecycle, migration iterations, JOB_COMPLETED with the final figures) and
connection keepalives need it. libvirt requires the loop to be registered before the
connections that use it are opened, so :func:`ensure_loop` runs before every open.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["ensure_loop"]

log = logging.getLogger("vmmove.libvirt")

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; they arrive as exceptions anyway."""


def _tick(_timer: int, _opaque: Any) -> None:
    """A periodic timer, so one loop iteration never blocks for long."""


def _run(lv: Any) -> None:
    while True:
        try:
            if lv.virEventRunDefaultImpl() < 0:
                time.sleep(0.1)
        except Exception:  # the loop must outlive any one bad iteration
            log.exception("libvirt event loop iteration failed")
            time.sleep(0.1)


def ensure_loop(lv: Any) -> None:
    """Register libvirt's default event implementation and start its thread, once."""
    global _thread  # noqa: PLW0603 (one event loop per process, as libvirt wants)
    with _lock:
        if _thread is not None:
            return
        lv.registerErrorHandler(_quiet, None)
        lv.virEventRegisterDefaultImpl()
        lv.virEventAddTimeout(1000, _tick, None)
        _thread = threading.Thread(
            target=_run, args=(lv,), name="vmmove-libvirt-events", daemon=True
        )
        _thread.start()
