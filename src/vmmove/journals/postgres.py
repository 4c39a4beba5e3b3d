"""The journal on PostgreSQL: the SQLite journal's semantics for clients on many machines.

Every transition is one statement, committed before the engine acts on it. The database
holds the one-migration-per-VM rule itself (a unique index over the in-flight records).

A store opened with an ``owner`` (a worker, :mod:`vmmove.worker`) writes only records it
holds a lease on: each save is fenced on ``owner`` and on the lease having at least
``margin`` seconds left by the database's clock. A save that finds the lease gone raises
:class:`LeaseLost`, and the worker stops acting on that record; another worker adopts it
once the lease has expired. Leases are read and written on the database's clock only, so
the workers' own clocks never matter.

Every change is announced with ``NOTIFY`` (channel :attr:`PgJournal.channel`): workers wake
on new queue items, supervisors learn of cancels, ``vmmove watch`` follows the estate.

The DSN's password never leaves this module: reprs, errors and records show
:func:`~vmmove.journals.redact_dsn`'s form.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from vmmove.engine.supervisor import RunLost
from vmmove.errors import Conflict, ConnectionFailed, InvalidInput, NotFound, VMMoveError
from vmmove.journal import record_from_json, record_to_json
from vmmove.journals import redact_dsn, scrub
from vmmove.journals.pgschema import SCHEMA_VERSION, upgrade
from vmmove.model import MigrationRecord

__all__ = ["LeaseLost", "PgJournal"]

#: seconds a store without an owner keeps retrying an unreachable database
RETRY_FOR = 30.0
_CONNECT_TIMEOUT = 5


class LeaseLost(RunLost):
    """This worker no longer holds the lease on a record: it must stop acting on it.

    A ``BaseException`` (through :class:`RunLost`) on purpose: it must pass through the
    engine's ``except Exception`` guards, which would otherwise record a failure in a record
    that is no longer ours; the supervisor loop drops the run."""

    def __init__(self, record: str, message: str) -> None:
        super().__init__(message)
        self.record = record


# The statements, whole: each is one round trip, committed on its own.
_INSERT = (
    "INSERT INTO vmmove_records (id, estate, vm, phase, terminal, created_at, updated_at, "
    "body, owner, lease_until) SELECT %(id)s, %(estate)s, %(vm)s, %(phase)s, %(terminal)s, "
    "%(created_at)s, %(updated_at)s, %(body)s, %(owner)s::text, "
    "CASE WHEN %(owner)s::text IS NULL THEN NULL "
    "ELSE now() + %(lease)s * interval '1 second' END"
)
_NOTIFY = " SELECT pg_notify(%(channel)s, %(payload)s) FROM r"
_BEGIN = "".join(("WITH r AS (", _INSERT, " RETURNING id)", _NOTIFY))
_BEGIN_CLAIMED = "".join(
    (
        "WITH q AS (UPDATE vmmove_queue SET record = %(id)s WHERE id = %(item)s ",
        "AND worker = %(owner)s AND state = 'claimed' RETURNING id), r AS (",
        _INSERT,
        " FROM q RETURNING id)",
        _NOTIFY,
    )
)
_FENCED = (
    "WITH r AS (UPDATE vmmove_records SET phase = %(phase)s, terminal = %(terminal)s, "
    "updated_at = %(updated_at)s, body = %(body)s WHERE id = %(id)s AND owner = %(owner)s "
    "AND lease_until > now() + %(margin)s * interval '1 second' RETURNING id)"
)
_UPSERT = (
    "WITH r AS (INSERT INTO vmmove_records (id, estate, vm, phase, terminal, created_at, "
    "updated_at, body) VALUES (%(id)s, %(estate)s, %(vm)s, %(phase)s, %(terminal)s, "
    "%(created_at)s, %(updated_at)s, %(body)s) ON CONFLICT (id) DO UPDATE SET "
    "phase = excluded.phase, terminal = excluded.terminal, updated_at = excluded.updated_at, "
    "body = excluded.body RETURNING id)"
)
_ENDING = (
    ", c AS (DELETE FROM vmmove_cancels WHERE record IN (SELECT id FROM r)), "
    "q AS (UPDATE vmmove_queue SET state = 'done', ended_at = now() "
    "WHERE record IN (SELECT id FROM r) AND state = 'claimed')"
)
_SAVES = {
    (True, False): _FENCED + _NOTIFY,
    (True, True): _FENCED + _ENDING + _NOTIFY,
    (False, False): _UPSERT + _NOTIFY,
    (False, True): _UPSERT + _ENDING + _NOTIFY,
}


class PgJournal:
    """A :class:`vmmove.store.RecordStore` in PostgreSQL (``postgresql://...``)."""

    def __init__(
        self,
        dsn: str,
        *,
        estate: str = "",
        owner: str | None = None,
        lease: float = 15.0,
        retry_for: float | None = None,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise InvalidInput("the PostgreSQL journal needs a postgresql:// URI")
        if not lease > 0:
            raise InvalidInput(f"lease must be a positive number of seconds, not {lease!r}")
        self._dsn = dsn
        self.shown = redact_dsn(dsn)
        self.estate = estate
        self.owner = owner
        self.lease = float(lease)
        #: a save needs this much of the lease left: a worker frozen right after a save
        #: still has this long before anyone may adopt the record
        self.margin = self.lease / 3
        # An owner retries as long as its lease may last: the fence refuses it after that.
        self.retry_for = retry_for if retry_for is not None else (lease if owner else RETRY_FOR)
        self._app = f"vmmove {owner}"[:63] if owner else "vmmove"  # who is who in pg_stat_activity
        self._lock = threading.RLock()
        self._db: psycopg.Connection[Any] | None = None
        self._backoff = threading.Event()  # never set: a pause between reconnects
        #: the queue item a worker is starting (begin() links the record to it)
        self.claim: ContextVar[str | None] = ContextVar(f"vmmove-claim-{id(self)}", default=None)
        #: statements sent (each one round trip), for the benchmarks
        self.round_trips = 0
        # VM -> monotonic time until which this owner's lease on its record surely lasts
        self._held: dict[str, float] = {}
        #: the supervisor's guard (a worker's :class:`vmmove.worker.supervisor.LeaseGuard`)
        self.step_guard: Any = None
        self._cancels: set[str] | None = None  # kept by the listener once it runs
        self._shared: dict[str, Any] = {"listener": None}  # one listener for all twins
        db = self._connect()
        try:
            found = upgrade(db)
        except VMMoveError:
            db.close()
            raise
        except psycopg.Error as exc:
            db.close()
            raise self._refused(exc) from None
        self.upgraded_from = found
        self.schema = db.execute("SELECT current_schema()").fetchone()
        self.channel = f"vmmove_{(self.schema or ('public',))[0]}"[:63]

    def __repr__(self) -> str:
        return f"<vmmove.PgJournal {self.shown}>"

    # ---- the connection ------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            db = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT,
                application_name=self._app,
            )
        except psycopg.Error as exc:
            raise ConnectionFailed(
                f"cannot reach the journal {self.shown}: {scrub(str(exc), self._dsn)}"
            ) from None
        self._db = db
        return db

    def connect_raw(self) -> psycopg.Connection[Any]:
        """Another connection to the same database (the listener's, a watcher's)."""
        return psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT, application_name=self._app
        )

    def _refused(self, exc: psycopg.Error) -> VMMoveError:
        return InvalidInput(
            f"the journal {self.shown} refused a statement: {scrub(str(exc), self._dsn)}"
        )

    def drop_connection(self) -> None:
        """Close the connection now (tests: what a network cut does); the next statement
        reconnects."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def query(self, sql: str, params: Any = None, *, record: str = "") -> list[tuple[Any, ...]]:
        """Run one statement (one round trip) and return its rows. A lost connection is
        retried for ``retry_for`` seconds; then an owner's store raises :class:`LeaseLost`
        (its lease cannot be trusted any more), any other :class:`ConnectionFailed`."""
        deadline: float | None = None
        with self._lock:
            while True:
                try:
                    db = self._db if self._db is not None and not self._db.closed else None
                    if db is None:
                        db = self._connect()
                    self.round_trips += 1
                    cur = db.execute(sql, params)
                    return cur.fetchall() if cur.description is not None else []
                except (psycopg.OperationalError, ConnectionFailed) as exc:
                    if isinstance(exc, psycopg.Error) and exc.sqlstate and not _disconnect(exc):
                        raise self._refused(exc) from None
                    if self._db is not None:
                        self._db.close()
                        self._db = None
                    now = time.monotonic()
                    deadline = deadline if deadline is not None else now + self.retry_for
                    if now >= deadline:
                        text = scrub(str(exc), self._dsn)
                        if self.owner:
                            raise LeaseLost(
                                record, f"the journal was unreachable past the lease: {text}"
                            ) from None
                        raise ConnectionFailed(
                            f"the journal {self.shown} is unreachable: {text}"
                        ) from None
                    self._backoff.wait(0.2)  # a back-off between reconnects, not a sync
                except pgerrors.UniqueViolation:
                    raise
                except psycopg.Error as exc:
                    raise self._refused(exc) from None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """Several statements in one transaction (claims); no retry inside."""
        with self._lock:
            db = self._db if self._db is not None and not self._db.closed else self._connect()
            try:
                with db.transaction():
                    yield db
            except psycopg.OperationalError as exc:
                db.close()
                self._db = None
                raise ConnectionFailed(
                    f"the journal {self.shown} dropped the connection: {scrub(str(exc), self._dsn)}"
                ) from None

    def for_estate(self, estate: str) -> PgJournal:
        """The same database and connection, seen from one estate."""
        twin = object.__new__(PgJournal)
        twin.__dict__.update(self.__dict__)
        twin.estate = estate
        return twin

    # ---- RecordStore ---------------------------------------------------------------------
    def _payload(self, record: MigrationRecord) -> str:
        return json.dumps(
            {
                "k": "rec",
                "id": record.id,
                "vm": record.vm_name,
                "phase": record.phase.value,
                "estate": self.estate,
                "owner": self.owner or "",
            }
        )

    def begin(self, record: MigrationRecord) -> None:
        params = {
            "id": record.id,
            "estate": self.estate,
            "vm": record.vm,
            "phase": record.phase.value,
            "terminal": record.phase.terminal,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "body": record_to_json(record),
            "owner": self.owner,
            "lease": self.lease,
            "item": self.claim.get(),
            "channel": self.channel,
            "payload": self._payload(record),
        }
        # A worker's start of a queue item: only while the claim is still its own.
        sql = _BEGIN_CLAIMED if params["item"] is not None else _BEGIN
        sent = time.monotonic()
        try:
            rows = self.query(sql, params, record=record.id)
        except pgerrors.UniqueViolation:
            raise self._conflict(record) from None
        if not rows:
            raise LeaseLost(record.id, f"the claim on queue item {params['item']} was lost")
        if self.owner:
            self._hold(record.vm, sent + self.lease)

    def _conflict(self, record: MigrationRecord) -> Conflict:
        rows = self.query(
            "SELECT id, owner FROM vmmove_records WHERE estate = %s AND vm = %s AND NOT terminal",
            (self.estate, record.vm),
        )
        if not rows:  # the holder ended in between: say so rather than guess
            return Conflict(f"VM {record.vm_name} was being migrated; try again")
        holder, owner = rows[0]
        by = f" (worker {owner})" if owner else ""
        return Conflict(
            f"VM {record.vm_name} is being migrated by record {holder}{by}; "
            f"see `vmmove show {holder}`, or re-attach with `vmmove attach {holder}`"
        )

    def save(self, record: MigrationRecord) -> None:
        terminal = record.phase.terminal
        params = {
            "id": record.id,
            "estate": self.estate,
            "vm": record.vm,
            "phase": record.phase.value,
            "terminal": terminal,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "body": record_to_json(record),
            "owner": self.owner,
            "margin": self.margin,
            "channel": self.channel,
            "payload": self._payload(record),
        }
        # The end frees the VM, clears a cancel request and closes the queue item.
        sql = _SAVES[bool(self.owner), terminal]
        sent = time.monotonic()
        rows = self.query(sql, params, record=record.id)
        if not self.owner:
            return
        if not rows:
            self._held.pop(record.vm, None)
            raise LeaseLost(record.id, f"worker {self.owner} lost its lease on {record.id}")
        # The fence held: at least `margin` of the lease was left when the save ran.
        self._hold(record.vm, sent + self.margin)

    def _hold(self, vm: str, until: float) -> None:
        self._held[vm] = max(self._held.get(vm, 0.0), until)

    def renewed(self, vms: set[str], until: float) -> None:
        """A heartbeat renewed the leases on these VMs' records until at least ``until``
        (monotonic: the time it was sent plus the lease)."""
        for vm in vms:
            self._hold(vm, until)

    def holds(self, vm: str, for_s: float) -> bool:
        """Whether this owner's lease on ``vm``'s record surely lasts ``for_s`` s more. A
        lease is only ever extended by its owner, so every bound seen stays valid."""
        return time.monotonic() + for_s < self._held.get(vm, 0.0)

    def get(self, record_id: str) -> MigrationRecord:
        rows = self.query("SELECT body FROM vmmove_records WHERE id = %s", (record_id,))
        if not rows:
            raise NotFound(f"no migration record {record_id!r} in {self.shown}")
        return record_from_json(rows[0][0])

    def estate_of(self, record_id: str) -> str:
        rows = self.query("SELECT estate FROM vmmove_records WHERE id = %s", (record_id,))
        if not rows:
            raise NotFound(f"no migration record {record_id!r} in {self.shown}")
        return str(rows[0][0])

    def owner_of(self, record_id: str) -> str | None:
        rows = self.query("SELECT owner FROM vmmove_records WHERE id = %s", (record_id,))
        if not rows:
            raise NotFound(f"no migration record {record_id!r} in {self.shown}")
        return None if rows[0][0] is None else str(rows[0][0])

    def list(self, limit: int | None = None) -> list[MigrationRecord]:
        # Insertion order, newest first, as the SQLite journal lists.
        sql = "SELECT body FROM vmmove_records ORDER BY seq DESC"
        rows = self.query(sql + " LIMIT %s", (limit,)) if limit else self.query(sql)
        return [record_from_json(r[0]) for r in rows]

    def adopt(self, record: MigrationRecord) -> None:
        """This client now supervises ``record``: a worker takes the lease (already its own
        after a take-over), anyone else only a record no live worker holds."""
        if self.owner:
            sent = time.monotonic()
            rows = self.query(
                "UPDATE vmmove_records SET owner = %(owner)s, "
                "lease_until = now() + %(lease)s * interval '1 second' WHERE id = %(id)s "
                "AND (owner = %(owner)s OR owner IS NULL OR lease_until < now()) RETURNING id",
                {"owner": self.owner, "lease": self.lease, "id": record.id},
            )
            if rows:
                self._hold(record.vm, sent + self.lease)
        else:
            rows = self.query(
                "UPDATE vmmove_records SET owner = NULL, lease_until = NULL WHERE id = %s "
                "AND (owner IS NULL OR lease_until < now()) RETURNING id",
                (record.id,),
            )
        if not rows:
            owner = self.owner_of(record.id)
            raise Conflict(
                f"record {record.id} is held by worker {owner}, whose lease is live: "
                "it is being driven already"
            )

    # ---- requests from other processes -----------------------------------------------------
    def request_cancel(self, record_id: str) -> None:
        """Ask whichever worker or client supervises ``record_id`` to cancel it."""
        payload = json.dumps({"k": "cancel", "id": record_id})
        rows = self.query(
            "WITH r AS (SELECT id, terminal FROM vmmove_records WHERE id = %(id)s), "
            "c AS (INSERT INTO vmmove_cancels (record) SELECT id FROM r WHERE NOT terminal "
            "ON CONFLICT (record) DO NOTHING) "
            "SELECT terminal, pg_notify(%(channel)s, %(payload)s) FROM r",
            {"id": record_id, "channel": self.channel, "payload": payload},
        )
        if not rows:
            raise NotFound(f"no migration record {record_id!r} in {self.shown}")

    def cancel_requests(self) -> set[str]:
        """Cancels asked for anywhere. Read once; from then on kept by LISTEN/NOTIFY (the
        supervisors ask every loop: no query per loop)."""
        return set(self.listener().cancels)

    def listener(self) -> Any:
        """The journal's LISTEN thread (:class:`vmmove.journals.listen.Listener`), started on
        first use."""
        if self._shared["listener"] is None:
            from vmmove.journals.listen import Listener  # noqa: PLC0415

            with self._lock:
                if self._shared["listener"] is None:
                    listener = Listener(self)
                    listener.start()
                    self._shared["listener"] = listener
        return self._shared["listener"]

    def read_cancels(self) -> set[str]:
        return {r[0] for r in self.query("SELECT record FROM vmmove_cancels")}

    def close(self) -> None:
        listener = self._shared["listener"]
        if listener is not None:
            self._shared["listener"] = None
            listener.stop()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _disconnect(exc: psycopg.Error) -> bool:
    """A lost or shut-down connection (worth reconnecting), not a refused statement."""
    state = exc.sqlstate or ""
    return state.startswith(("08", "57P")) or state == ""


__all__ += ["SCHEMA_VERSION"]
