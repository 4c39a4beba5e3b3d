"""A worker's supervisor loop: the connection's, acting only while the worker's lease is
fresh, and dropping (never driving again) a run whose lease it lost."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmmove.engine.supervisor import Supervisor
from vmmove.journals.postgres import LeaseLost

if TYPE_CHECKING:
    from vmmove.engine import Connection
    from vmmove.engine.run import MigrationRun

log = logging.getLogger("vmmove.worker")


class WorkerSupervisor(Supervisor):
    def __init__(self, conn: Connection, on_change: Callable[[], None]) -> None:
        super().__init__(conn.clock, conn.store)
        self.conn = conn
        self.on_change = on_change
        #: monotonic time until which the lease is surely ours (set by each heartbeat)
        self.fresh_until = 0.0
        self.dropped: set[str] = set()
        self.lost = threading.Event()  # set once any run was dropped (tests)

    def fresh(self) -> bool:
        return time.monotonic() < self.fresh_until

    def _step(self) -> float | None:
        with self.cond:
            self._take_requests()
            now = self.clock.now()
            if not self.fresh():
                # The lease may have lapsed (the process was frozen, the database gone):
                # act on nothing until a heartbeat says which records are still ours.
                self.cond.notify_all()
                return now + self.conn.backend.poll_interval if self._heap else None
            advanced: set[int] = set()
            ended = False
            while self._heap and self._heap[0][0] <= now:
                _, _, run = heapq.heappop(self._heap)
                if run.phase.terminal or id(run) in advanced or run.record.id in self.dropped:
                    continue
                advanced.add(id(run))
                try:
                    due = run.advance(now)
                except LeaseLost as exc:
                    log.warning("record %s: %s; no longer acting on it", run.record.id, exc)
                    self._drop(run)
                    continue
                if due is not None:
                    heapq.heappush(self._heap, (due, next(self._seq), run))
                ended = ended or run.phase.terminal
            self.cond.notify_all()
            due_next = self._heap[0][0] if self._heap else None
        if ended:
            self.on_change()  # a slot is free: claim more
        return due_next

    def _drop(self, run: MigrationRun) -> None:
        """Called with the lock held: forget the run, act on it never again."""
        self.dropped.add(run.record.id)
        self.conn._runs.pop(run.record.id, None)
        self.conn.ledger.settle(run)
        self.lost.set()

    def keep_only(self, held: set[str]) -> list[str]:
        """After a heartbeat: drop every run not in ``held``; return their ids."""
        with self.cond:
            gone = [
                r
                for r in list(self.conn._runs.values())
                if not r.phase.terminal and r.record.id not in held
            ]
            for run in gone:
                log.warning("record %s: lease lost; no longer acting on it", run.record.id)
                self._drop(run)
            return [r.record.id for r in gone]

    def active(self) -> list[str]:
        with self.cond:
            return [r.record.id for r in self.conn._runs.values() if not r.phase.terminal]

    def resume(self) -> None:
        """The lease is fresh again: let the loop act at once."""
        self._wake.set()
