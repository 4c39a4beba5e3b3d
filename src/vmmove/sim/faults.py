"""Faults the simulator can be told to meet: each is armed for the next matching migration,
in a given phase, so the fault matrix can be walked phase by phase."""

from __future__ import annotations

from dataclasses import dataclass

from vmmove.errors import InvalidInput
from vmmove.machine import Phase

__all__ = ["FAULT_KINDS", "FAULT_STATES", "Fault"]

FAULT_KINDS = ("target-fails", "link-drop", "reserve-refused", "shutdown-ignored")

# Native job states -> shared phases. Cold jobs reuse the same machine.
FAULT_STATES = {
    Phase.REQUESTING: ("setup", "setup"),
    Phase.TRANSFERRING: ("precopy", "copy"),
    Phase.SWITCHING_OVER: ("stopcopy", "boot"),
    Phase.POSTCOPY: ("postcopy", "postcopy"),
    Phase.COMPLETING: ("cleanup", "cleanup"),
}


@dataclass(frozen=True, kw_only=True)
class Fault:
    """An injected fault: the next migration of ``vm`` (or to ``host``) meets it.

    ``kind``: ``target-fails`` or ``link-drop`` (the job fails ``after`` seconds into
    ``phase``; for a cold move in ``switching_over``, the VM does not start on the target),
    ``reserve-refused`` (the target refuses the reservation), or ``shutdown-ignored`` (the
    guest ignores the next guest shutdown; a forced power-off still works).
    """

    kind: str
    vm: str | None = None
    host: str | None = None
    phase: Phase = Phase.TRANSFERRING
    after: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise InvalidInput(f"fault kind must be one of {', '.join(FAULT_KINDS)}")
        if self.phase not in FAULT_STATES:
            raise InvalidInput(
                f"faults can be injected in {', '.join(FAULT_STATES)}, not {self.phase}"
            )
