"""Durable records: every transition on disk, one migration per VM across processes,
and re-attaching after the client died.

The tests that take the ``journal`` fixture run against both stores: the SQLite file and
PostgreSQL (a real server, :mod:`vmmove.testing.pgserver`): the same semantics."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import vmmove
from vmmove import EventKind, Phase
from vmmove.engine import Connection
from vmmove.journal import Journal, record_from_json, record_to_json
from vmmove.journals import open_journal
from vmmove.plugins import load_plugins
from vmmove.sim import SimBackend, parse


@pytest.fixture(params=["sqlite", "postgresql"])
def journal(
    request: pytest.FixtureRequest, journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Which journal ``VMMOVE_JOURNAL`` names for this test: its SQLite file, or a
    PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return str(journal_path)
    dsn: str = request.getfixturevalue("pg_dsn")
    monkeypatch.setenv("VMMOVE_JOURNAL", dsn)
    return dsn


def test_journal_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600
    mode = journal._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_every_transition_is_on_disk_and_round_trips(journal: str) -> None:
    with vmmove.connect("sim://") as conn:
        m = conn.migrate("web-1", to="host-b", policy="balanced")
        seen = []
        for event in m.events():
            if event.kind is EventKind.PHASE:
                # Written before it is acted on: the file already holds this phase.
                on_disk = open_journal(journal).get(m.id)
                seen.append(event.phase in [t.phase for t in on_disk.history])
        record = m.wait()
    assert seen
    assert all(seen)
    assert record.predicted is not None  # the forecast is kept with the record, too
    stored = open_journal(journal).get(record.id)
    assert stored == record
    assert record_from_json(record_to_json(record)) == record
    assert open_journal(journal).estate_of(record.id) == "sim://"


def test_damaged_record_is_a_clear_error() -> None:
    with pytest.raises(vmmove.InvalidInput, match="damaged"):
        record_from_json('{"id": "x"}')


RACER = """
import sys, vmmove
conn = vmmove.connect("sim://")
print("ready", flush=True)
sys.stdin.readline()  # the barrier: both racers go on the same line from the test
try:
    print("ok", conn.migrate("db-1", to="host-b").id, flush=True)  # never driven: in flight
except vmmove.Conflict as exc:
    print("conflict", exc, flush=True)
"""


def test_two_real_processes_cannot_migrate_one_vm(journal: str) -> None:
    env = {**os.environ, "VMMOVE_JOURNAL": journal}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for p in racers:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    for p in racers:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert all(p.returncode == 0 for p in racers)
    assert results[0].startswith("conflict")
    assert results[1].startswith("ok")
    winner = results[1].split()[1]
    assert f"record {winner}" in results[0]  # the loser is told who holds the VM
    assert "vmmove attach" in results[0]


def test_a_finished_migration_frees_the_vm(journal: str) -> None:
    with vmmove.connect("sim://") as conn:
        conn.migrate("web-1", to="host-b").wait()
        conn.migrate("web-1", to="host-c").wait()
        conn.migrate("web-1", to="host-a").wait()
    history = open_journal(journal).list()
    assert [r.target for r in history] == ["host-a", "host-c", "host-b"]


def _abandon(conn: Connection) -> None:
    """What a client crash leaves behind: the record on disk, nobody supervising."""
    conn._sup.close()


@pytest.mark.parametrize("crash_at", [Phase.REQUESTING, Phase.TRANSFERRING, Phase.SWITCHING_OVER])
def test_attach_after_the_client_died(crash_at: Phase, journal: str) -> None:
    backend = SimBackend()  # the hypervisor outlives the client
    first = Connection(
        backend, uri="sim://", plugins=load_plugins(), store=open_journal().for_estate("sim://")
    )
    m = first.migrate("db-1", to="host-b")
    for event in m.events():
        if event.kind is EventKind.PHASE and event.phase is crash_at:
            break
    _abandon(first)
    second = Connection(
        backend, uri="sim://", plugins=load_plugins(), store=open_journal().for_estate("sim://")
    )
    with pytest.raises(vmmove.Conflict):
        second.migrate("db-1", to="host-c")  # still locked: the migration is in flight
    again = second.attach(m.id)
    record = again.wait()
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "host-b" == backend.locate("db-1")
    assert open_journal().get(m.id).phase is Phase.COMPLETED
    second.migrate("db-1", to="host-a").wait()  # the lock went with the record


def test_an_adopter_holds_the_caller_s_limits(journal: str) -> None:
    """The record keeps what the caller set; without it the adopter would throttle this
    runaway guest as hard as it takes (the default policy, unlimited), and finish."""
    guest = {"name": "v", "host": "a", "memory_mib": 2048, "working_set_mib": 1024,
             "dirty_mib_s": 400, "power": "running"}  # fmt: skip
    backend = SimBackend(parse({"link_mib_s": 200, "host": [{"name": "a"}, {"name": "b"}],
                                "vm": [guest]}))  # fmt: skip
    first = Connection(
        backend, uri="sim://", plugins=load_plugins(), store=open_journal().for_estate("sim://")
    )
    m = first.migrate("v", to="b", allow_postcopy=False, max_slowdown=30)
    for event in m.events():
        if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
            break
    _abandon(first)
    assert dict(open_journal().get(m.id).limits) == {"allow_postcopy": False, "max_slowdown": 30}
    second = Connection(
        backend, uri="sim://", plugins=load_plugins(), store=open_journal().for_estate("sim://")
    )
    with pytest.raises(vmmove.MigrationTimedOut, match="max_slowdown"):
        second.attach(m.id).wait()
    assert backend.locate("v") == "a"


def test_attach_when_the_client_died_inside_start(
    monkeypatch: pytest.MonkeyPatch, journal: str
) -> None:
    backend = SimBackend()
    store = open_journal().for_estate("sim://")
    first = Connection(backend, uri="sim://", plugins=load_plugins(), store=store)

    def die(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process is killed while the platform call is made

    monkeypatch.setattr(backend, "start", die)
    m = first.migrate("db-1", to="host-b")
    with pytest.raises(KeyboardInterrupt):
        m.wait()
    monkeypatch.undo()
    _abandon(first)
    assert store.get(m.id).job_ref["intent"] == "start"
    second = Connection(backend, uri="sim://", plugins=load_plugins(), store=store)
    handle = second.attach(m.id)
    with pytest.raises(vmmove.MigrationCancelled):
        handle.wait()
    assert handle.record.vm_host == "host-a" == backend.locate("db-1")


def test_attach_to_a_finished_record_returns_it(journal: str) -> None:
    with vmmove.connect("sim://") as conn:
        record = conn.migrate("web-1", to="host-b").wait()
    handle = vmmove.attach(record.id)
    assert handle.done
    assert handle.record == record


def test_attach_unknown_record_is_not_found(journal: str) -> None:
    with pytest.raises(vmmove.NotFound):
        vmmove.attach("no-such-record")


def test_a_damaged_journal_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "j.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(vmmove.InvalidInput, match="move it aside"):
        Journal(bad)


def test_a_stale_wal_beside_a_deleted_journal_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with vmmove.connect("sim://", store=Journal(path)) as conn:
        conn.migrate("web-1", to="host-b").wait()
    path.unlink()  # someone removed the database but not its -wal and -shm
    fresh = Journal(path)
    assert fresh.list() == []


def test_attach_to_an_ended_record_raises_its_outcome(journal: str) -> None:
    with vmmove.connect("sim://") as conn:
        m = conn.migrate("db-1", to="host-b")
        for event in m.events():
            if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
                m.cancel()
    with pytest.raises(vmmove.MigrationCancelled):
        vmmove.attach(m.id).wait()


def test_journal_off_means_no_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMMOVE_JOURNAL", "off")
    with vmmove.connect("sim://") as conn:
        assert not isinstance(conn.store, Journal)
    with pytest.raises(vmmove.InvalidInput, match="journal is off"):
        Journal()
