"""Durable migration records in SQLite, and the per-VM lock that spans processes.

The engine saves every transition here before it acts on it, so a client that dies
mid-migration leaves a record that says what was under way and how to find the job again
(``job_ref``). :func:`vmmove.attach` picks it up from there.

The file lives at ``platformdirs.user_data_path("vmmove") / "journal.sqlite3"`` (override
with ``VMMOVE_JOURNAL``), mode 0600, in WAL mode so readers never block the writer.

The lock: one row per (estate, VM). Taking it fails with :class:`Conflict` while another
record that is not terminal holds it, whichever process wrote that record; a lock whose
record ended is free. A record whose client died stays in flight until someone attaches.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vmmove.errors import Conflict, InvalidInput, NotFound
from vmmove.machine import Phase
from vmmove.model import (
    Figures,
    MigrationMode,
    MigrationRecord,
    StepRecord,
    Transition,
)

__all__ = ["Journal", "default_path", "record_from_json", "record_to_json"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    estate TEXT NOT NULL,
    vm TEXT NOT NULL,
    phase TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (created_at);
CREATE TABLE IF NOT EXISTS cancel_requests (
    record TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    estate TEXT NOT NULL,
    vm TEXT NOT NULL,
    record TEXT NOT NULL,
    pid INTEGER NOT NULL,
    PRIMARY KEY (estate, vm)
);
"""


OFF = ("off", "memory", "none")


def default_path() -> Path:
    env = os.environ.get("VMMOVE_JOURNAL")
    if env and env.lower() in OFF:
        raise InvalidInput(f"the journal is off (VMMOVE_JOURNAL={env}): there are no records")
    if env:
        return Path(env)
    import platformdirs  # noqa: PLC0415 (only when a journal is opened)

    return platformdirs.user_data_path("vmmove") / "journal.sqlite3"


def record_to_json(record: MigrationRecord) -> str:
    # Written by hand, not dataclasses.asdict: this runs on every transition of every
    # migration, and asdict's deep copy costs ten times as much.
    r = record
    f = r.figures
    return json.dumps(
        {
            "id": r.id,
            "backend": r.backend,
            "vm": r.vm,
            "vm_name": r.vm_name,
            "source": r.source,
            "target": r.target,
            "mode": r.mode.value,
            "policy": r.policy,
            "phase": r.phase.value,
            "vm_host": r.vm_host,
            "history": [{"phase": t.phase.value, "at": t.at, "note": t.note} for t in r.history],
            "steps": [
                {"step": s.step, "at": s.at, "applied": s.applied, "reason": s.reason}
                for s in r.steps
            ],
            "warnings": list(r.warnings),
            "error": r.error,
            "error_type": r.error_type,
            "figures": {
                "total_time": f.total_time,
                "downtime_ms": f.downtime_ms,
                "data_sent": f.data_sent,
                "iterations": f.iterations,
            },
            "job_ref": dict(r.job_ref),
            "created_at": r.created_at,
            "updated_at": r.updated_at,
        }
    )


def record_from_json(text: str) -> MigrationRecord:
    try:
        body: dict[str, Any] = json.loads(text)
        return MigrationRecord(
            **{
                **body,
                "mode": MigrationMode(body["mode"]),
                "phase": Phase(body["phase"]),
                "history": tuple(
                    Transition(**{**t, "phase": Phase(t["phase"])}) for t in body["history"]
                ),
                "steps": tuple(StepRecord(**s) for s in body["steps"]),
                "warnings": tuple(body["warnings"]),
                "figures": Figures(**body["figures"]),
            }
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"journal record is damaged: {exc}") from None


class Journal:
    """A :class:`vmmove.store.RecordStore` that survives the process."""

    def __init__(self, path: str | Path | None = None, *, estate: str = "") -> None:
        self.path = Path(path) if path is not None else default_path()
        self.estate = estate
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # A WAL left beside a deleted database would be replayed into the new one.
            for stale in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                stale.unlink(missing_ok=True)
        # Create owner-only before SQLite opens it: records name hosts and VMs.
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a client crash
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InvalidInput(
                f"the journal {self.path} is unusable ({exc}): move it aside, "
                "or point VMMOVE_JOURNAL elsewhere"
            ) from None

    def __repr__(self) -> str:
        return f"<vmmove.Journal {self.path}>"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def for_estate(self, estate: str) -> Journal:
        """The same file, seen from one estate (locks are per estate and VM)."""
        twin = object.__new__(Journal)
        twin.__dict__.update(self.__dict__)
        twin.estate = estate
        return twin

    # ---- RecordStore -------------------------------------------------------------------
    def save(self, record: MigrationRecord) -> None:
        with self._tx() as db:
            self._upsert(db, record)
            if record.phase.terminal:
                db.execute("DELETE FROM locks WHERE record = ?", (record.id,))
                db.execute("DELETE FROM cancel_requests WHERE record = ?", (record.id,))

    def _upsert(self, db: sqlite3.Connection, record: MigrationRecord) -> None:
        db.execute(
            "INSERT INTO records (id, estate, vm, phase, created_at, updated_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "phase = excluded.phase, updated_at = excluded.updated_at, body = excluded.body",
            (
                record.id,
                self.estate,
                record.vm,
                record.phase.value,
                record.created_at,
                record.updated_at,
                record_to_json(record),
            ),
        )

    def get(self, record_id: str) -> MigrationRecord:
        row = self._db.execute("SELECT body FROM records WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise NotFound(f"no migration record {record_id!r} in {self.path}")
        return record_from_json(row[0])

    def estate_of(self, record_id: str) -> str:
        row = self._db.execute("SELECT estate FROM records WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise NotFound(f"no migration record {record_id!r} in {self.path}")
        return str(row[0])

    def list(self, limit: int | None = None) -> list[MigrationRecord]:
        # Insertion order, not created_at: a simulator's virtual clock starts at a fixed date.
        sql = "SELECT body FROM records ORDER BY rowid DESC"
        rows = self._db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [record_from_json(r[0]) for r in rows]

    # ---- the per-VM lock ---------------------------------------------------------------
    def begin(self, record: MigrationRecord) -> None:
        """Save a new record and take the lock on its VM in one transaction, or raise
        :class:`Conflict` and write nothing."""
        with self._tx() as db:
            row = db.execute(
                "SELECT l.record, l.pid, r.phase FROM locks l LEFT JOIN records r "
                "ON r.id = l.record WHERE l.estate = ? AND l.vm = ?",
                (self.estate, record.vm),
            ).fetchone()
            if row is not None:
                holder, pid, phase = row
                if phase is not None and not Phase(phase).terminal:
                    raise Conflict(
                        f"VM {record.vm_name} is being migrated by record {holder} "
                        f"(process {pid}); see `vmmove show {holder}`, "
                        f"or re-attach with `vmmove attach {holder}`"
                    )
            self._upsert(db, record)
            db.execute(
                "INSERT OR REPLACE INTO locks (estate, vm, record, pid) VALUES (?, ?, ?, ?)",
                (self.estate, record.vm, record.id, os.getpid()),
            )

    def adopt(self, record: MigrationRecord) -> None:
        """This process now supervises ``record`` (after :func:`vmmove.attach`)."""
        with self._tx() as db:
            db.execute("UPDATE locks SET pid = ? WHERE record = ?", (os.getpid(), record.id))

    # ---- requests from other processes ---------------------------------------------------
    def request_cancel(self, record_id: str) -> None:
        """Ask whichever process supervises ``record_id`` to cancel it."""
        self.get(record_id)  # NotFound for a record that does not exist
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO cancel_requests (record, at) VALUES (?, ?)",
                (record_id, time.time()),
            )

    def cancel_requests(self) -> set[str]:
        """Records someone asked to cancel; the supervisors read this once per loop."""
        return {r[0] for r in self._db.execute("SELECT record FROM cancel_requests")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
