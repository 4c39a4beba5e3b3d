"""One classifier for how a migration ended.

A single table maps an error class to everything that follows from it: the terminal
phase the record takes, the ``error_type`` stored in it, the CLI's exit code and the error
``Migration.wait()`` raises. The live path, ``attach``, ``history``/``show``, the CLI and the
fleet report all read it here, so the same record means the same thing everywhere, before
and after a restart. docs/errors.md carries the same table (a test compares them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmmove import errors as e
from vmmove.machine import Phase

if TYPE_CHECKING:  # not at import: the CLI reads this module on every start
    from vmmove.model import MigrationRecord

__all__ = ["OUTCOMES", "ExitCode", "Outcome", "error_of", "exit_code", "outcome_of"]


class ExitCode(enum.IntEnum):
    """The CLI's exit codes."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    REFUSED = 3
    FAILED = 4
    CANCELLED = 5
    NOT_FOUND = 6
    CONNECTION = 7
    WAIT_TIMEOUT = 8
    INTERRUPTED = 130


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What one kind of ending means. ``phase`` is ``None`` for errors that end no record
    (they are raised before a migration exists, or while it goes on)."""

    error: type[e.VMMoveError]
    phase: Phase | None
    exit_code: ExitCode
    meaning: str

    @property
    def error_type(self) -> str:
        return self.error.__name__


def _o(error: type[e.VMMoveError], phase: Phase | None, code: ExitCode, meaning: str) -> Outcome:
    return Outcome(error=error, phase=phase, exit_code=code, meaning=meaning)


F, C = Phase.FAILED, Phase.CANCELLED
#: Most specific first: the first row whose class the error is an instance of decides.
OUTCOMES: tuple[Outcome, ...] = (
    _o(e.PostcopyFailed, F, ExitCode.FAILED, "failed after the commit point: the VM may be lost"),
    _o(
        e.MigrationTimedOut,
        F,
        ExitCode.FAILED,
        "budget, stall, slowdown or policy abort; VM on source",
    ),
    _o(e.MigrationCancelled, C, ExitCode.CANCELLED, "cancelled before the commit point"),
    _o(e.MigrationFailed, F, ExitCode.FAILED, "failed; the record names where the VM runs"),
    _o(e.MigrationError, F, ExitCode.FAILED, "did not complete"),
    _o(e.PrecheckFailed, F, ExitCode.REFUSED, "refused by pre-checks; VM untouched"),
    _o(e.ReservationRefused, F, ExitCode.REFUSED, "the target refused to reserve; VM untouched"),
    _o(e.Conflict, F, ExitCode.REFUSED, "another migration owns the VM; VM untouched"),
    _o(e.NotSupported, F, ExitCode.REFUSED, "the backend lacks a needed capability"),
    _o(e.NotFound, F, ExitCode.NOT_FOUND, "the VM, host or job is gone"),
    _o(e.AuthenticationFailed, F, ExitCode.CONNECTION, "the platform refused the credentials"),
    _o(e.ConnectionFailed, F, ExitCode.CONNECTION, "the platform could not be reached"),
    _o(e.InvalidInput, F, ExitCode.USAGE, "bad argument, URI, spec or configuration"),
    _o(e.BackendNotFound, None, ExitCode.USAGE, "no plugin serves the URI's scheme"),
    _o(e.WaitTimeout, None, ExitCode.WAIT_TIMEOUT, "wait() gave up; the migration goes on"),
    _o(e.BackendProtocolError, F, ExitCode.INTERNAL, "a backend reported the impossible"),
    _o(e.VMMoveError, F, ExitCode.INTERNAL, "any other error"),
)
del F, C

_BY_NAME = {o.error_type: o for o in OUTCOMES}


def outcome_of(error: e.VMMoveError | type[e.VMMoveError] | str) -> Outcome:
    """The row for an error, an error class, or a stored ``error_type`` name."""
    if isinstance(error, str):
        return _BY_NAME.get(error, OUTCOMES[-1])
    kind = error if isinstance(error, type) else type(error)
    for row in OUTCOMES:
        if issubclass(kind, row.error):
            return row
    return OUTCOMES[-1]


def exit_code(error: BaseException) -> ExitCode:
    """The CLI exit code for an error (anything not from vmmove is an internal error)."""
    if isinstance(error, e.VMMoveError):
        return outcome_of(error).exit_code
    return ExitCode.INTERNAL


def error_of(record: MigrationRecord) -> e.VMMoveError | None:
    """The error ``wait()`` raises for a record, built from the record alone: the same on
    the live path, after ``attach`` and from the journal. ``None`` for a completed record
    or one still running."""
    if not record.phase.terminal or record.phase is Phase.COMPLETED:
        return None
    default = "MigrationCancelled" if record.phase is Phase.CANCELLED else "MigrationFailed"
    kind = outcome_of(record.error_type or default).error
    detail = record.error or str(record.phase)
    if issubclass(kind, e.MigrationError):
        err: e.VMMoveError = kind(
            f"migration of {record.vm_name}: {detail}", vm_host=record.vm_host
        )
        err.record = record  # type: ignore[attr-defined]
        return err
    if issubclass(kind, e.PrecheckFailed):
        err = e.PrecheckFailed(detail)
        err.problems = tuple(record.problems)
        return err
    return kind(detail)
