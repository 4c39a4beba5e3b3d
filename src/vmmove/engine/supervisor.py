"""One supervisor loop for all migrations of a connection.

Extension point: a store shared with other processes (a worker's PostgreSQL journal) may
carry a :class:`StepGuard` as ``store.step_guard``; the loop then asks it, each step, whether
it may act at all and on which runs, and tells it which runs it lost and how many ended. A
run whose ``advance`` raises :class:`RunLost` is dropped from the loop, never advanced again.
Without a guard the loop is the single-process one, unchanged.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from vmmove.clock import Clock, VirtualClock
from vmmove.store import RecordStore

if TYPE_CHECKING:
    from vmmove.engine.run import MigrationRun


log = logging.getLogger("vmmove.engine")


class RunLost(BaseException):
    """This process may no longer act on a run: another one holds it now (a worker's lost
    lease). A ``BaseException`` so that the engine's ``except Exception`` guards let it pass
    instead of recording a failure in a record that is no longer ours."""


class StepGuard(Protocol):
    """What the loop asks of a store shared with other processes (``store.step_guard``).
    Every method is called with the supervisor lock held, except :meth:`stepped`."""

    def pause(self) -> float | None:
        """Seconds of the clock to wait before acting on anything (``None``: act now)."""

    def keeps(self, run: MigrationRun) -> bool:
        """Whether this process may still act on ``run`` (``False``: :meth:`lost` follows)."""

    def lost(self, run: MigrationRun) -> None:
        """``run`` left the loop for good (refused by :meth:`keeps`, or :class:`RunLost`)."""

    def stepped(self, ended: int) -> None:
        """A step ended ``ended`` runs (> 0): slots are free (called without the lock)."""


class Supervisor:
    """One loop for all migrations of a connection."""

    def __init__(self, clock: Clock, store: RecordStore) -> None:
        self.clock = clock
        self.store = store
        self.cond = threading.Condition(threading.RLock())
        self._heap: list[tuple[float, int, MigrationRun]] = []
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, run: MigrationRun) -> None:
        with self.cond:
            heapq.heappush(self._heap, (self.clock.now(), next(self._seq), run))
            if not self.clock.virtual and self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="vmmove-supervisor", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def poke(self, run: MigrationRun) -> None:
        """Make ``run`` due now (a cancel was asked)."""
        with self.cond:
            heapq.heappush(self._heap, (self.clock.now(), next(self._seq), run))
        self._wake.set()

    def _step(self) -> float | None:
        """Advance everything due; return the next due time (``None``: nothing left)."""
        ended = 0
        with self.cond:
            self._take_requests()
            now = self.clock.now()
            guard: StepGuard | None = getattr(self.store, "step_guard", None)
            wait = None if guard is None else guard.pause()
            if wait is not None:  # e.g. a lease not known to be ours: act on nothing
                self.cond.notify_all()
                return now + wait if self._heap else None
            advanced: set[int] = set()
            while self._heap and self._heap[0][0] <= now:
                _, _, run = heapq.heappop(self._heap)
                if run.phase.terminal or id(run) in advanced:
                    continue  # a poke left a duplicate entry
                advanced.add(id(run))
                if guard is not None and not guard.keeps(run):
                    guard.lost(run)
                    continue
                try:
                    due = run.advance(now)
                except RunLost as exc:
                    log.warning("migration %s: %s; no longer acting on it", run.record.id, exc)
                    if guard is not None:
                        guard.lost(run)
                    continue
                if due is not None:
                    heapq.heappush(self._heap, (due, next(self._seq), run))
                elif run.phase.terminal:
                    ended += 1
            self.cond.notify_all()
            due_next = self._heap[0][0] if self._heap else None
        if guard is not None and ended:
            guard.stepped(ended)
        return due_next

    def _take_requests(self) -> None:
        """Cancels asked for by other processes through the journal (``vmmove cancel ID``)."""
        if not self._heap:
            return
        ids = self.store.cancel_requests()
        if not ids:
            return
        for _, _, run in self._heap:
            if run.record.id in ids and run.phase.cancellable and not run.cancel_requested:
                refused = run.cancel_refused()
                if refused is not None:
                    run.refuse_cancel(f"(asked by another process) {refused}")
                    continue
                run.cancel_requested = True
                run.warn("cancel requested by another process")

    def _loop(self) -> None:
        while True:
            with self.cond:
                if self._closed:  # never poll a backend that is being closed
                    self._thread = None
                    return
            due = self._step()
            with self.cond:
                if due is None or self._closed:
                    self._thread = None
                    return
            self._wake.clear()
            self.clock.wait(self._wake, due - self.clock.now())

    def drive_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Return once ``done()`` holds, or ``False`` after ``timeout`` seconds of the clock."""
        clock = self.clock
        deadline = None if timeout is None else clock.now() + timeout
        if isinstance(clock, VirtualClock):
            while True:
                with self.cond:
                    if done():
                        return True
                    if not self._heap:
                        return done()
                    due = self._heap[0][0]
                    if deadline is not None and due > deadline:
                        clock.advance_to(deadline)
                        return done()
                    clock.advance_to(due)
                    self._step()
        with self.cond:
            while not done():
                left = None if deadline is None else deadline - clock.now()
                if left is not None and left <= 0:
                    return False
                # Real seconds to wait for a notify: scaled clocks run faster than real time.
                speed = getattr(clock, "speed", 1.0)
                self.cond.wait(None if left is None else left / speed)
            return True

    def close(self) -> None:
        with self.cond:
            self._closed = True
        self._wake.set()
