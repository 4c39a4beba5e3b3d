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
from typing import Any

import vmmove
from vmmove.errors import InvalidInput, VMMoveError
from vmmove.journals.postgres import LeaseLost, PgJournal
from vmmove.machine import Phase
from vmmove.model import MigrationMode, MigrationSpec
from vmmove.worker import queue
from vmmove.worker.supervisor import WorkerSupervisor

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
        store = PgJournal(journal, owner=self.id, lease=lease)
        self.conn = vmmove.connect(uri, store=store, **dict(options or {}))
        self.store: PgJournal = self.conn.store  # type: ignore[assignment]
        self.sup = WorkerSupervisor(self.conn, self.wake_up)
        self.conn._sup = self.sup  # the worker's loop: lease-aware
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.draining = False
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
            kind == "rec" and message.get("phase") in ("completed", "failed", "cancelled")
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
        try:
            while not self._stop.is_set():
                self._wake.clear()
                self.tick()
                if self.draining and not self.sup.active():
                    break
                if until_idle and not self.sup.active() and self.idle():
                    break
                self._wake.wait(self.heartbeat_every)  # the heartbeat's period
        finally:
            self.close()

    def tick(self) -> None:
        try:
            self.heartbeat()
            self.take_over()
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

    def heartbeat(self) -> None:
        sent = time.monotonic()
        # Only what this worker drives: a record it dropped must expire for others to adopt.
        rows = self.store.query(
            "WITH w AS (UPDATE vmmove_workers SET seen_at = now() WHERE id = %(me)s) "
            "UPDATE vmmove_records SET lease_until = now() + %(lease)s * interval '1 second' "
            "WHERE owner = %(me)s AND id = ANY(%(ids)s) AND NOT terminal "
            "AND lease_until > now() RETURNING id",
            {"me": self.id, "lease": self.lease, "ids": self.sup.active()},
        )
        held = {r[0] for r in rows}
        self.sup.keep_only(held)
        self.sup.fresh_until = sent + self.lease - self.store.margin
        self.sup.resume()

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
                handle = self.conn.attach(record_id)
            except LeaseLost:
                continue
            except VMMoveError as exc:
                log.warning("worker %s: cannot adopt %s: %s", self.id, record_id, exc)
                continue
            record = handle.record
            if record.phase is Phase.CANCELLED and record.error == _NOTHING_STARTED:
                queue.requeue_record(self.store, record_id)  # nothing happened: try again
        return ids

    def fill(self) -> None:
        free = self.capacity - len(self.sup.active())
        for item in queue.claim(self.store, self.id, free, self.lease):
            self._start(item)

    def _start(self, item: queue.Item) -> None:
        s = item.spec
        spec = MigrationSpec(
            vm=item.vm,
            target=s.get("target"),
            mode=MigrationMode(s.get("mode", "auto")),
            policy=s.get("policy", "balanced"),
            bandwidth=s.get("bandwidth"),
            max_downtime=s.get("max_downtime"),
            completion_budget_per_gib=s.get("completion_budget_per_gib"),
            stall_timeout=s.get("stall_timeout"),
            datastore=s.get("datastore"),
        )
        token = self.store.claim.set(item.id)
        try:
            self.conn.migrate(spec=spec)
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
        self.sup.close()
        with contextlib.suppress(LeaseLost, VMMoveError):
            self.store.query("UPDATE vmmove_workers SET stopped = true WHERE id = %s", (self.id,))
        self.conn.backend.close()
        self.store.close()


def status(journal: PgJournal) -> dict[str, Any]:
    """Counts of the queue by state (``vmmove worker --status``)."""
    rows = journal.query(
        "SELECT state, count(*) FROM vmmove_queue WHERE estate = %s GROUP BY state",
        (journal.estate,),
    )
    return {str(s): int(n) for s, n in rows}
