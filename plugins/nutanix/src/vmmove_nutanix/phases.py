"""Prism task states, v4 and v2.0, and the shared phase each maps onto: one table each.

A migrate task reports no switch-over of its own: the engine records ``switching_over`` as
inferred. A status Prism may add later is not a crash: it maps by whether the task has
begun moving (see :func:`phase_of`).
"""

from __future__ import annotations

from vmmove.machine import Phase

__all__ = ["V2_TASK_PHASES", "V4_TASK_PHASES", "phase_of"]

V4_TASK_PHASES: dict[str, Phase] = {
    "QUEUED": Phase.REQUESTING,
    "RUNNING": Phase.TRANSFERRING,
    # never for a migrate (isCancelable is false); for other tasks it is still running
    "CANCELING": Phase.TRANSFERRING,
    "SUCCEEDED": Phase.COMPLETED,
    "FAILED": Phase.FAILED,
    "CANCELED": Phase.CANCELLED,
}

V2_TASK_PHASES: dict[str, Phase] = {
    "None": Phase.REQUESTING,
    "Queued": Phase.REQUESTING,
    "Running": Phase.TRANSFERRING,
    "Succeeded": Phase.COMPLETED,
    "Failed": Phase.FAILED,
    "Aborted": Phase.CANCELLED,
}


def phase_of(status: str, *, v4: bool, percent: float | None) -> tuple[Phase, str]:
    """The phase of a task status, and the native text to record. An unknown status is
    kept as text and read as still running: moving once Prism reports any progress."""
    table = V4_TASK_PHASES if v4 else V2_TASK_PHASES
    phase = table.get(status)
    if phase is not None:
        return phase, status
    moving = percent is not None and percent > 0
    return (
        Phase.TRANSFERRING if moving else Phase.REQUESTING,
        f"{status} (status unknown to vmmove; read as running)",
    )
