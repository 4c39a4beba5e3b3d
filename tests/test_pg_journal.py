"""What the PostgreSQL journal adds to the SQLite journal's semantics: a versioned schema
(upgraded, or refused when newer), the one-migration-per-VM rule held by the database,
fenced saves for leases, and a DSN whose password is never shown."""

from __future__ import annotations

import psycopg
import pytest

import vmmove
from vmmove.journal import record_to_json
from vmmove.journals import redact_dsn
from vmmove.journals.pgschema import SCHEMA_VERSION, upgrade
from vmmove.journals.postgres import LeaseLost, PgJournal


def test_an_old_schema_is_upgraded_and_a_newer_one_refused(pg_dsn: str) -> None:
    with vmmove.connect("sim://", journal="off") as conn:
        record = conn.migrate("web-1", to="host-b").wait()
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        assert upgrade(db, upto=1) == 0  # version 1: no leases, no queue
        db.execute(
            "INSERT INTO vmmove_records (id, estate, vm, phase, terminal, created_at, "
            "updated_at, body) VALUES (%s, 'sim://', %s, 'completed', true, 0, 0, %s)",
            (record.id, record.vm, record_to_json(record)),
        )
    journal = PgJournal(pg_dsn)
    assert journal.upgraded_from == 1
    assert journal.get(record.id) == record  # the record survived the upgrade
    journal.query("UPDATE vmmove_meta SET value = %s", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(vmmove.InvalidInput, match="newer than this vmmove"):
        PgJournal(pg_dsn)


def test_the_database_itself_refuses_a_second_in_flight_record(pg_dsn: str) -> None:
    with vmmove.connect("sim://", journal=pg_dsn) as conn:
        m = conn.migrate("db-1", to="host-b")
        journal = PgJournal(pg_dsn)
        row = journal.query("SELECT estate, vm, body FROM vmmove_records WHERE id = %s", (m.id,))
        # Bypassing vmmove entirely: the database says no by itself.
        with (
            pytest.raises(psycopg.errors.UniqueViolation),
            psycopg.connect(pg_dsn, autocommit=True) as db,
        ):
            db.execute(
                "INSERT INTO vmmove_records (id, estate, vm, phase, terminal, created_at, "
                "updated_at, body) VALUES ('other', %s, %s, 'pending', false, 0, 0, %s)",
                row[0],
            )
        m.wait()


def test_a_save_without_the_lease_is_refused(pg_dsn: str) -> None:
    owner = PgJournal(pg_dsn, owner="w-a", lease=30).for_estate("sim://")
    with vmmove.connect("sim://", store=owner) as conn:
        m = conn.migrate("web-1", to="host-b")
        record = owner.get(m.id)
        owner.query("UPDATE vmmove_records SET lease_until = now() - interval '1 second'")
        with pytest.raises(LeaseLost):
            owner.save(record)
        other = PgJournal(pg_dsn, owner="w-b", lease=30).for_estate("sim://")
        other.adopt(record)  # the expired lease is anyone's
        assert owner.owner_of(m.id) == "w-b"
        with pytest.raises(LeaseLost):
            owner.save(record)
        conn.detach()


def test_the_password_is_never_shown(pg_dsn: str) -> None:
    secret = "s3cr3t-pw"
    assert secret not in redact_dsn(f"postgresql://u:{secret}@h:5/db")
    assert secret not in redact_dsn(f"postgresql://u@h/db?password={secret}")
    assert secret not in redact_dsn(f"host=h password={secret} dbname=db")
    bad = pg_dsn.replace("vmmove@", f"nobody:{secret}@").replace("127.0.0.1:", "127.0.0.1:1")
    with pytest.raises(vmmove.ConnectionFailed) as info:
        PgJournal(bad.split("?")[0].rsplit(":", 1)[0] + ":1/postgres")
    assert secret not in str(info.value)
    assert "***" in str(info.value)
    journal = PgJournal(pg_dsn)
    assert "vmmove" in repr(journal)
