"""The PostgreSQL journal's schema, versioned: vmmove creates it and upgrades an older one,
one step at a time, and refuses a newer one (written by a later vmmove) with a clear error.

Version 1 is the SQLite journal's shape; 2 adds ownership and leases (several workers);
3 adds the queue of moves the workers claim. Every step runs in one transaction under an
advisory lock, so workers starting together never upgrade twice.
"""

from __future__ import annotations

from typing import Any

from vmmove.errors import InvalidInput

__all__ = ["SCHEMA_VERSION", "STEPS", "upgrade"]

# A fixed key for pg_advisory_xact_lock: "vmmove" in ASCII.
_LOCK_KEY = 0x766D6D6F7665

STEPS: dict[int, str] = {
    1: """
CREATE TABLE vmmove_records (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL UNIQUE,
    estate TEXT NOT NULL,
    vm TEXT NOT NULL,
    phase TEXT NOT NULL,
    terminal BOOLEAN NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL
);
-- The one-migration-per-VM rule, held by the database itself: two clients on two
-- machines can never both have an in-flight record for one VM.
CREATE UNIQUE INDEX vmmove_one_per_vm ON vmmove_records (estate, vm) WHERE NOT terminal;
CREATE TABLE vmmove_cancels (
    record TEXT PRIMARY KEY REFERENCES vmmove_records (id) ON DELETE CASCADE,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
""",
    2: """
ALTER TABLE vmmove_records ADD COLUMN owner TEXT;
ALTER TABLE vmmove_records ADD COLUMN lease_until TIMESTAMPTZ;
CREATE INDEX vmmove_inflight_by_owner ON vmmove_records (owner) WHERE NOT terminal;
CREATE INDEX vmmove_inflight_by_lease ON vmmove_records (estate, lease_until) WHERE NOT terminal;
CREATE TABLE vmmove_workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    estate TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped BOOLEAN NOT NULL DEFAULT false
);
""",
    3: """
CREATE TABLE vmmove_queue (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL UNIQUE,
    estate TEXT NOT NULL,
    vm TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT,
    clusters TEXT[] NOT NULL,
    spec TEXT NOT NULL,
    max_source INTEGER,
    max_target INTEGER,
    max_cluster INTEGER,
    max_total INTEGER,
    state TEXT NOT NULL DEFAULT 'queued',
    worker TEXT,
    record TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT '',
    queued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_at TIMESTAMPTZ,
    ended_at TIMESTAMPTZ
);
-- One queued or running move per VM.
CREATE UNIQUE INDEX vmmove_queue_one_per_vm ON vmmove_queue (estate, vm)
    WHERE state IN ('queued', 'claimed');
CREATE INDEX vmmove_queue_by_state ON vmmove_queue (estate, state, seq);
CREATE INDEX vmmove_queue_by_record ON vmmove_queue (record);
""",
}

SCHEMA_VERSION = max(STEPS)


def upgrade(db: Any, *, upto: int = SCHEMA_VERSION) -> int:
    """Bring the schema to ``upto`` (on a psycopg connection in autocommit mode); return the
    version found. A schema newer than this vmmove knows is refused, untouched."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS vmmove_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        row = db.execute("SELECT value FROM vmmove_meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise InvalidInput(
                f"the journal's schema is version {found}, newer than this vmmove knows "
                f"({SCHEMA_VERSION}): upgrade vmmove on this machine; nothing was changed"
            )
        for version in range(found + 1, upto + 1):
            db.execute(STEPS[version])
        if upto > found:
            db.execute(
                "INSERT INTO vmmove_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(upto),),
            )
    return found
