"""What a migration tells its observers, in order."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vmmove.machine import Phase
from vmmove.model import MigrationRecord, Progress

__all__ = ["EventKind", "MigrationEvent"]


class EventKind(enum.StrEnum):
    PHASE = "phase"  # the migration entered ``phase``
    PROGRESS = "progress"  # new progress figures
    STEP = "step"  # a policy step fired (applied or skipped: see ``message``)
    WARNING = "warning"


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrationEvent:
    migration: str  # record id
    vm: str
    kind: EventKind
    phase: Phase
    at: float
    progress: Progress | None = None
    message: str = ""
    #: the record as it stood when the event was emitted: observers (metrics, traces) read
    #: the backend, mode, outcome and figures here rather than keep copies of their own
    record: MigrationRecord | None = None
