"""A worker: one process that drives moves from the queue in one estate, beside others.

Every ``heartbeat`` seconds (a third of the lease) and whenever the journal announces a
new queue item or an ended record, the worker

1. renews its leases in one statement (``lease_until > now()`` by the database's clock:
   an expired lease is never renewed) and drops every run whose lease it lost;
2. adopts the in-flight records of this estate whose lease expired (a dead, frozen or
   cut-off worker's), through ``Connection.attach``: the backend finds each job again, the
   engine verifies where the VM runs, and drives it to a true end;
3. claims queued moves up to its capacity, within the limits counted in the database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import vmmove
from vmmove.errors import InvalidInput, VMMoveError
from vmmove.journals.postgres import LeaseLost, PgJournal
from vmmove.machine import Phase
from vmmove.worker import queue
from vmmove.worker.fenced import FencedBackend
from vmmove.worker.supervisor import LeaseGuard

if TYPE_CHECKING:
    from vmmove.backend import Backend
    from vmmove.engine import Connection, Migration

__all__ = ["Worker"]

log = logging.getLogger("vmmove.worker")

_NOTHING_STARTED = "the client went away before the job started"


class Worker:
    def __init__(
        self,
        uri: str,
        journal: str,
        *,
        capacity: int = 20,
        lease: float = 15.0,
        worker_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if capacity < 1:
            raise InvalidInput("a worker's capacity is at least 1")
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.capacity = capacity
        self.lease = lease
        self.heartbeat_every = lease / 3
        self._uri = uri
        self._options = dict(options or {})
        store = PgJournal(journal, owner=self.id, lease=lease)
        self.conn = vmmove.connect(uri, store=store, **self._options)
        self.store: PgJournal = self.conn.store  # type: ignore[assignment]
        self.guard = LeaseGuard(self.conn.backend.poll_interval, self.wake_up)
        self.store.step_guard = self.guard  # the supervisor loop asks it each step
        self.conn.backend = cast("Backend", FencedBackend(self.conn.backend, self.store))
        #: every connection this worker drives runs in (a second one only to adopt again a
        #: record this worker once lost: the first still holds the stale run)
        self.conns = [self.conn]
        self.running: dict[str, Migration] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.draining = False
        self.blocked = False  # the last claim left queued moves behind (limits were full)
        self.adopted: list[tuple[str, float]] = []  # (record, monotonic time), for figures
        self.store.query(
            "INSERT INTO vmmove_workers (id, host, pid, estate) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET seen_at = now(), stopped = false",
            (self.id, socket.gethostname(), os.getpid(), self.store.estate),
        )
        self.store.listener().subscribers.append(self._notified)

    def __repr__(self) -> str:
        return f"<vmmove.Worker {self.id} {self.conn.uri} {self.store.shown}>"

    def wake_up(self) -> None:
        self._wake.set()

    def _notified(self, message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind in ("queue", "connected") or (
            kind == "rec"
            and self.blocked  # another's end frees a limit only for moves held back by one
            and message.get("owner") != self.id
            and message.get("phase") in ("completed", "failed", "cancelled")
        ):
            self._wake.set()

    def stop(self, *, drain: bool = True) -> None:
        """Claim nothing more; with ``drain`` finish what runs first (else detach: the
        leases expire and other workers adopt the records)."""
        self.draining = True
        if not drain:
            self._stop.set()
        self._wake.set()

    # ---- the loop -------------------------------------------------------------------------
    def run(self, *, until_idle: bool = False) -> None:
        """Work until :meth:`stop` (or, with ``until_idle``, until the estate's queue holds
        nothing queued or running and no record is in flight)."""
        next_beat = 0.0
        try:
            while not self._stop.is_set():
                self._wake.clear()
                beat = time.monotonic() >= next_beat
                if beat:
                    next_beat = time.monotonic() + self.heartbeat_every
                self.tick(beat=beat)
                if self.draining and not self.active():
                    break
                if until_idle and not self.active() and self.idle():
                    break
                self._wake.wait(max(0.0, next_beat - time.monotonic()))
        finally:
            self.close()

    def tick(self, *, beat: bool = True) -> None:
        """The heartbeat and take-over every ``heartbeat_every`` s; a claim at every wake."""
        try:
            if beat:
                self.heartbeat()
                self.take_over()
                queue.requeue_dead_claims(self.store, self.lease)
            if not self.draining:
                self.fill()
        except (LeaseLost, VMMoveError) as exc:
            # The database is unreachable: act on nothing (the supervisor sees the lease
            # go stale) and try again next beat.
            log.warning("worker %s: %s", self.id, exc)

    def idle(self) -> bool:
        try:
            rows = self.store.query(
                "SELECT (SELECT count(*) FROM vmmove_queue WHERE estate = %(e)s "
                "AND state IN ('queued', 'claimed')) + (SELECT count(*) FROM vmmove_records "
                "WHERE estate = %(e)s AND NOT terminal)",
                {"e": self.store.estate},
            )
        except (LeaseLost, VMMoveError):
            return False
        return int(rows[0][0]) == 0

    def active(self) -> list[str]:
        """The records this worker drives now."""
        for record_id, handle in list(self.running.items()):
            if handle.record.phase.terminal or not self.guard.acts_on(
                record_id, id(handle.connection)
            ):
                self.running.pop(record_id, None)
        return list(self.running)

    def heartbeat(self) -> None:
        sent = time.monotonic()
        # Only what this worker drives: a record it dropped must expire for others to adopt.
        rows = self.store.query(
            "WITH w AS (UPDATE vmmove_workers SET seen_at = now() WHERE id = %(me)s) "
            "UPDATE vmmove_records SET lease_until = now() + %(lease)s * interval '1 second' "
            "WHERE owner = %(me)s AND id = ANY(%(ids)s) AND NOT terminal "
            "AND lease_until > now() RETURNING id, vm",
            {"me": self.id, "lease": self.lease, "ids": self.active()},
        )
        held = {r[0] for r in rows}
        for record_id, handle in list(self.running.items()):
            if record_id not in held:
                self.guard.revoke(record_id, id(handle.connection))
        self.store.renewed({str(r[1]) for r in rows}, sent + self.lease)
        self.guard.fresh_until = sent + self.lease - self.store.margin

    def take_over(self) -> list[str]:
        rows = self.store.query(
            "UPDATE vmmove_records SET owner = %(me)s, "
            "lease_until = now() + %(lease)s * interval '1 second' WHERE id IN ("
            "SELECT id FROM vmmove_records WHERE estate = %(estate)s AND NOT terminal "
            "AND owner IS NOT NULL AND lease_until < now() ORDER BY seq "
            "FOR UPDATE SKIP LOCKED) RETURNING id",
            {"me": self.id, "lease": self.lease, "estate": self.store.estate},
        )
        ids = [r[0] for r in rows]
        if ids:
            self.store.query(
                "UPDATE vmmove_queue SET worker = %s WHERE record = ANY(%s)", (self.id, ids)
            )
        for record_id in ids:
            log.info("worker %s adopts record %s", self.id, record_id)
            self.adopted.append((record_id, time.monotonic()))
            try:
                handle = self._conn_for(record_id).attach(record_id)
            except LeaseLost:
                continue
            except VMMoveError as exc:
                log.warning("worker %s: cannot adopt %s: %s", self.id, record_id, exc)
                continue
            record = handle.record
            if not record.phase.terminal:
                self.running[record_id] = handle
            elif record.phase is Phase.CANCELLED and record.error == _NOTHING_STARTED:
                queue.requeue_record(self.store, record_id)  # nothing happened: try again
        return ids

    def _conn_for(self, record_id: str) -> Connection:
        """A connection that holds no stale run of ``record_id`` (one it lost before)."""
        for conn in self.conns:
            if self.guard.acts_on(record_id, id(conn)):
                return conn
        conn = vmmove.connect(self._uri, store=self.store, **self._options)
        conn.backend = cast("Backend", FencedBackend(conn.backend, self.store))
        self.conns.append(conn)
        return conn

    def fill(self) -> None:
        free = self.capacity - len(self.active())
        if free <= 0:
            return
        items, left = queue.claim(self.store, self.id, free)
        self.blocked = left
        for item in items:
            self._start(item)

    def _start(self, item: queue.Item) -> None:
        token = self.store.claim.set(item.id)
        try:
            handle = self.conn.migrate(spec=item.migration_spec())
            self.running[handle.id] = handle
        except LeaseLost:
            return  # the claim went back to the queue meanwhile: someone else has it
        except VMMoveError as exc:
            # Refused at once (the VM is gone, another move holds it...): nothing moved.
            queue.settle_item(
                self.store, self.id, item.id, "refused", f"{type(exc).__name__}: {exc}"
            )
        finally:
            self.store.claim.reset(token)

    def close(self) -> None:
        for conn in self.conns:
            conn.detach()
        with contextlib.suppress(LeaseLost, VMMoveError):
            self.store.query("UPDATE vmmove_workers SET stopped = true WHERE id = %s", (self.id,))
        for conn in self.conns:
            conn.backend.close()
        self.store.close()


def status(journal: PgJournal) -> dict[str, Any]:
    """Counts of the queue by state (``vmmove worker --status``)."""
    rows = journal.query(
        "SELECT state, count(*) FROM vmmove_queue WHERE estate = %s GROUP BY state",
        (journal.estate,),
    )
    return {str(s): int(n) for s, n in rows}
