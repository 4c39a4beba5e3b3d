"""What the Hyper-V backend declares, importable without connecting (for ``vmmove backends``)."""

from __future__ import annotations

from vmmove.backend import Capabilities

__all__ = ["CAPABILITIES"]

#: Hyper-V decides downtime, bandwidth and convergence itself: no per-migration knob exists
#: (``max_downtime``, ``bandwidth``, ``auto_converge``, ``postcopy`` false; the pre-check
#: records each such policy step as decided by the platform). Progress is a percentage,
#: never bytes. Cancel is ``RequestStateChange(4)`` on the migration job. A cold move is the
#: core's, through power_off / relocate / power_on. Storage moves (``-IncludeStorage``) are
#: not offered.
CAPABILITIES = Capabilities(
    live=True,
    cold=True,
    cancel=True,
    postcopy=False,
    max_downtime=False,
    bandwidth=False,
    auto_converge=False,
    progress_bytes=False,
    reserve=False,
    storage_move=False,
    choose_target=True,
    relocate_stopped=True,
)
