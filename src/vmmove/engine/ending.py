"""The pieces of an ending before the inventory confirmed it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmmove.errors import (
    Conflict,
    InvalidInput,
    MigrationFailed,
    NotFound,
    PrecheckFailed,
    ReservationRefused,
    VMMoveError,
)
from vmmove.machine import Phase
from vmmove.model import Figures

if TYPE_CHECKING:
    from vmmove.backend import JobStatus

# Errors that already say what happened; anything else is wrapped as MigrationFailed.
KEEP_AS_IS = (
    PrecheckFailed,
    ReservationRefused,
    NotFound,
    InvalidInput,
    Conflict,
    MigrationFailed,
)

ABORT_WHY = {
    "timeout": "completion budget exhausted",
    "stall": "stalled: remaining data stopped falling",
    "policy": "aborted by policy",
    "slowdown": "the platform throttled the guest beyond the caller's max_slowdown",
}


@dataclass(kw_only=False)
class Ending:
    """How a migration is about to end, before the inventory has confirmed it."""

    phase: Phase
    kind: type[VMMoveError] | None
    message: str
    job_host: str | None = None
    figures: Figures | None = None
    postcopy: bool = False
    reported: str = ""  # the job's native status, for the record's warnings
    since: float = 0.0
    cause: VMMoveError | None = None
    #: When vmmove began a migration whose time it takes itself (a cold move): the record's
    #: total then runs to the outcome the inventory confirmed, not to the job's last report.
    started: float | None = None


def replace_ending(
    ending: Ending, phase: Phase, kind: type[VMMoveError] | None, message: str
) -> Ending:
    return dataclasses.replace(ending, phase=phase, kind=kind, message=message)


@dataclass
class RawReport:
    """The backend's own last figures, before smoothing. The engine records a slip in them as
    a warning; the contract kit's witness counts it as a broken rule: one judgement for both."""

    percent: float | None = None
    processed: int | None = None

    def take(self, status: JobStatus) -> list[tuple[str, str]]:
        """Note ``status``'s own figures; return ``(key, what fell)`` for each that went down
        since the last report that carried it."""
        slips = []
        for key, what, before, now, unit in (
            ("percent-down", "progress", self.percent, status.percent, "%"),
            ("bytes-down", "bytes sent", self.processed, status.data_processed, ""),
        ):
            if before is not None and now is not None and now < before:
                slips.append((key, f"{what} going down ({before:g}{unit} -> {now:g}{unit})"))
        if status.percent is not None:
            self.percent = status.percent
        if status.data_processed is not None:
            self.processed = status.data_processed
        return slips
