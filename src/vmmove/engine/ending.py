"""The pieces of an ending before the inventory confirmed it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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


def replace_ending(
    ending: Ending, phase: Phase, kind: type[VMMoveError] | None, message: str
) -> Ending:
    return dataclasses.replace(ending, phase=phase, kind=kind, message=message)


@dataclass
class RawReport:
    """The backend's own last figures, before smoothing."""

    percent: float | None = None
    processed: int | None = None
