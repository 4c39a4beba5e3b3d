"""Durable migration records in SQLite, and the per-VM lock that spans processes.

The engine saves every transition here before it acts on it, so a client that dies
mid-migration leaves a record that says what was under way and how to find the job again
(``job_ref``). :func:`vmmove.attach` picks it up from there.

The file lives at ``platformdirs.user_data_path("vmmove") / "journal.sqlite3"`` (override
with ``VMMOVE_JOURNAL``), mode 0600, in WAL mode so readers never block the writer.

Many processes use one file at once (a supervising ``vmmove migrate``, ``vmmove cancel``,
``history``...). Every write is one ``BEGIN IMMEDIATE`` transaction and every wait for the
file goes through SQLite's busy timeout. The file's locks and its ``-wal``/``-shm`` belong
to SQLite alone: a process that deletes a WAL another process still writes through, or
that lets a process's SQLite locks go (see ``__init__``), splits the processes onto two
logs: lost writes, a per-VM lock that is no longer exclusive, and now and then "database
disk image is malformed" in a file that checks clean once everyone has closed it.

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
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from vmmove.errors import Conflict, InvalidInput, NotFound, VMMoveError
from vmmove.machine import Phase
from vmmove.model import (
    Figures,
    MigrationMode,
    MigrationRecord,
    PowerState,
    Problem,
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

#: seconds a process waits for another one to finish with the file before giving up
BUSY_TIMEOUT = 10.0
# SQLITE_BUSY, SQLITE_LOCKED (primary codes: the low byte of an extended one)
_BUSY_CODES = (5, 6)


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
            "figures": _figures(f),
            "job_ref": dict(r.job_ref),
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "located_at": r.located_at,
            "source_name": r.source_name,
            "target_name": r.target_name,
            "vm_host_name": r.vm_host_name,
            "vm_power": None if r.vm_power is None else r.vm_power.value,
            "problems": [
                {"code": p.code, "message": p.message, "severity": p.severity} for p in r.problems
            ],
            "predicted": None if r.predicted is None else _figures(r.predicted),
            "limits": dict(r.limits),
        }
    )


def _figures(f: Figures) -> dict[str, Any]:
    return {
        "total_time": f.total_time,
        "downtime_ms": f.downtime_ms,
        "data_sent": f.data_sent,
        "iterations": f.iterations,
    }


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
                # Records written before these fields existed have neither key.
                "problems": tuple(Problem(**p) for p in body.get("problems", ())),
                "vm_power": None if body.get("vm_power") is None else PowerState(body["vm_power"]),
                "predicted": (
                    None if body.get("predicted") is None else Figures(**body["predicted"])
                ),
                "limits": dict(body.get("limits") or {}),
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create owner-only before SQLite opens it: records name hosts and VMs. Never
            # touch -wal/-shm here: another process may be using them right now (SQLite
            # discards a WAL beside an empty file itself, holding the lock that makes it safe).
            # O_EXCL: never open and close an existing file, as closing any descriptor of it
            # drops every POSIX lock this process holds there, the locks of its open SQLite
            # connections included; another process would then think itself the last user
            # and delete the WAL they still write to.
            with suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise InvalidInput(
                f"cannot create the journal {self.path} ({exc.strerror}): "
                "point VMMOVE_JOURNAL elsewhere"
            ) from None
        db = None
        try:
            # timeout= is the busy timeout from the very first statement on.
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None
            )
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # durable across a client crash
            db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            raise self._error(exc) from None
        self._db = db

    def __repr__(self) -> str:
        return f"<vmmove.Journal {self.path}>"

    def _error(self, exc: sqlite3.DatabaseError) -> VMMoveError:
        """The vmmove error for what SQLite said (never its exception: callers see ours)."""
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY_CODES:
            return Conflict(
                f"the journal {self.path} stayed locked by another process for "
                f"{BUSY_TIMEOUT:g} s; try again"
            )
        return InvalidInput(
            f"the journal {self.path} is unusable ({exc}): move it aside, "
            "or point VMMOVE_JOURNAL elsewhere"
        )

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One statement at a time on the shared connection: a read from one thread never
        runs inside another thread's open transaction."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: IMMEDIATE takes the file's write lock first (waiting up to
        the busy timeout), so what is read inside cannot go stale before the write."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise self._error(exc) from None

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
        with self._read() as db:
            row = db.execute("SELECT body FROM records WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise NotFound(f"no migration record {record_id!r} in {self.path}")
        return record_from_json(row[0])

    def estate_of(self, record_id: str) -> str:
        with self._read() as db:
            row = db.execute("SELECT estate FROM records WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise NotFound(f"no migration record {record_id!r} in {self.path}")
        return str(row[0])

    def list(self, limit: int | None = None) -> list[MigrationRecord]:
        # Insertion order, not created_at: a simulator's virtual clock starts at a fixed date.
        sql = "SELECT body FROM records ORDER BY rowid DESC"
        with self._read() as db:
            rows = db.execute(
                sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()
            ).fetchall()
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
        with self._tx() as db:
            row = db.execute("SELECT phase FROM records WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                raise NotFound(f"no migration record {record_id!r} in {self.path}")
            # Checked in the same transaction as the insert: a request for a record that
            # ended in between would never be cleared (only a terminal save clears them).
            if not Phase(row[0]).terminal:
                db.execute(
                    "INSERT OR REPLACE INTO cancel_requests (record, at) VALUES (?, ?)",
                    (record_id, time.time()),
                )

    def cancel_requests(self) -> set[str]:
        """Records someone asked to cancel; the supervisors read this once per loop."""
        with self._read() as db:
            return {r[0] for r in db.execute("SELECT record FROM cancel_requests").fetchall()}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch a new file to WAL mode (a no-op once it is). While another process opens the
    same brand-new file, SQLite refuses the switch with "database is locked" at once,
    without waiting through the busy timeout: retry it, up to that timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY_CODES
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)  # a back-off between attempts, not a synchronisation
