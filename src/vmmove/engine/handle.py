"""The handle a caller holds on one migration."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from vmmove.errors import WaitTimeout
from vmmove.events import MigrationEvent
from vmmove.model import (
    MigrationRecord,
    Progress,
)

if TYPE_CHECKING:
    from vmmove.engine.connection import Connection
    from vmmove.engine.run import MigrationRun
    from vmmove.engine.supervisor import Supervisor


class Migration:
    """A handle on one migration. Cheap to keep; all state lives in :attr:`record`."""

    def __init__(self, run: MigrationRun, supervisor: Supervisor) -> None:
        self._run = run
        self._sup = supervisor

    @property
    def connection(self) -> Connection:
        """The connection supervising this migration (close it when done with it)."""
        return self._run.conn

    def __repr__(self) -> str:
        rec = self._run.record
        return f"<Migration {rec.id} {rec.vm_name} {rec.phase} on {rec.vm_host}>"

    @property
    def id(self) -> str:
        return self._run.record.id

    @property
    def record(self) -> MigrationRecord:
        return self._run.record

    @property
    def progress(self) -> Progress:
        return self._run.progress

    @property
    def done(self) -> bool:
        return self._run.phase.terminal

    def wait(self, timeout: float | None = None) -> MigrationRecord:
        """Wait for the end; return the record if completed, else raise its error.

        ``timeout`` is in seconds of the connection's clock (simulated seconds on a
        virtual clock). :class:`WaitTimeout` leaves the migration running.
        """
        if not self._sup.drive_until(lambda: self._run.phase.terminal, timeout):
            raise WaitTimeout(f"migration {self.id} still {self._run.phase} after {timeout}s")
        if self._run.error is not None:
            raise self._run.error
        return self._run.record

    def cancel(self) -> bool:
        """Ask for a cancel. ``False`` when it comes too late (past the commit point or done)
        or cannot take effect (a platform that cannot abort a started job: the record says
        why); the outcome is read from :attr:`record`."""
        run = self._run
        with self._sup.cond:
            if not run.phase.cancellable or run.cancel_requested:
                return run.cancel_requested and not run.phase.terminal
            refused = run.cancel_refused()
            if refused is not None:
                run.refuse_cancel(refused)
                return False
            run.cancel_requested = True
        self._sup.poke(run)
        return True

    def events(self, timeout: float | None = None) -> Iterator[MigrationEvent]:
        """Every event from the start, then live ones, until the migration ends."""
        pos = 0
        log_ = self._run.events
        while True:
            items, pos = log_.read(pos)
            yield from items
            if self._run.phase.terminal and pos >= log_.end:
                return

            def more(seen: int = pos) -> bool:
                return log_.end > seen or self._run.phase.terminal

            if not self._sup.drive_until(more, timeout):
                raise WaitTimeout(f"no event from migration {self.id} for {timeout}s")
