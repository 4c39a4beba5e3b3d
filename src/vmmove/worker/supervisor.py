"""A worker's guard on the engine's supervisor loop (:class:`vmmove.engine.supervisor.StepGuard`,
installed as the journal's ``step_guard``): the loop acts only while the worker's lease is
fresh, and drops for good a run whose lease was lost."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmmove.engine.run import MigrationRun

__all__ = ["LeaseGuard"]

log = logging.getLogger("vmmove.worker")


class LeaseGuard:
    """Every method but :meth:`stepped` runs with the supervisor lock held."""

    def __init__(self, retry: float, on_end: Callable[[], None]) -> None:
        self.retry = retry  # seconds of the clock between checks while stale
        self.on_end = on_end
        #: monotonic time until which the lease is surely ours (set by each heartbeat)
        self.fresh_until = 0.0
        # record -> the connections (by id) in which this worker acts on it no more. Keyed
        # by connection: a record lost in one may be adopted again, through another.
        self.gone: dict[str, set[int]] = {}
        self.lost_any = threading.Event()  # set once any run was dropped (tests)

    def fresh(self) -> bool:
        return time.monotonic() < self.fresh_until

    # ---- StepGuard -------------------------------------------------------------------------
    def pause(self) -> float | None:
        # The lease may have lapsed (the process was frozen, the database gone): act on
        # nothing until a heartbeat says which records are still ours.
        return None if self.fresh() else self.retry

    def keeps(self, run: MigrationRun) -> bool:
        return id(run.conn) not in self.gone.get(run.record.id, ())

    def lost(self, run: MigrationRun) -> None:
        self.revoke(run.record.id, id(run.conn))
        run.conn.ledger.settle(run)  # its slot and claims are free
        self.lost_any.set()

    def stepped(self, ended: int) -> None:
        self.on_end()  # slots are free: claim more

    # ---- the worker's side -----------------------------------------------------------------
    def revoke(self, record_id: str, conn: int) -> None:
        """Act on ``record_id`` in connection ``conn`` never again (dropped when next due)."""
        if conn not in self.gone.setdefault(record_id, set()):
            log.warning("record %s: lease lost; no longer acting on it", record_id)
            self.gone[record_id].add(conn)

    def acts_on(self, record_id: str, conn: int) -> bool:
        return conn not in self.gone.get(record_id, ())
