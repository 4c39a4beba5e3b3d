"""One journal file, several processes at once: what a supervising ``vmmove migrate`` and
the ``vmmove cancel``/``history``/``show`` commands beside it do to the same file.

Each worker is this file run as a script. The test is the barrier: a worker prints a token
and blocks on stdin; once every worker has printed it, the test answers ``go`` to all of
them. No sleeps: every wait is on another process's line, under one watchdog deadline.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import traceback
from contextlib import ExitStack, suppress
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pytest

import vmmove
from vmmove.errors import Conflict, NotFound
from vmmove.journal import Journal
from vmmove.machine import Phase
from vmmove.model import MigrationMode, MigrationRecord, Transition

ESTATE = "sim://"
SHARED_VM = "shared-vm"
PATH = (
    Phase.PENDING,
    Phase.PREPARING,
    Phase.REQUESTING,
    Phase.TRANSFERRING,
    Phase.SWITCHING_OVER,
    Phase.COMPLETING,
    Phase.COMPLETED,
)
DEADLINE = 120.0  # seconds for a whole run; a hung worker is killed and the test fails


def _record(record_id: str, vm: str, at: float) -> MigrationRecord:
    return MigrationRecord(
        id=record_id,
        backend="sim",
        vm=vm,
        vm_name=vm,
        source="host-a",
        target="host-b",
        mode=MigrationMode.LIVE,
        policy="balanced",
        phase=Phase.PENDING,
        vm_host="host-a",
        history=(Transition(phase=Phase.PENDING, at=at),),
        created_at=at,
        updated_at=at,
    )


def _advance(record: MigrationRecord, phase: Phase) -> MigrationRecord:
    at = record.updated_at + 1.0
    host = "host-b" if phase is Phase.COMPLETED else record.vm_host
    return replace(
        record,
        phase=phase,
        vm_host=host,
        history=(*record.history, Transition(phase=phase, at=at)),
        updated_at=at,
    )


# ---- the worker (this file run as a script) ---------------------------------------------
def _sync(token: str) -> None:
    """Tell the test we reached ``token``; go on when it says every worker has."""
    print(token, flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(f"no go after {token}")


def _worker(path: str, me: int, workers: int, rounds: int, races: int) -> dict[str, Any]:
    _sync("start")
    journal = Journal(path, estate=ESTATE)  # every worker opens the brand-new file at once
    mine: list[str] = []
    won: list[int] = []
    for k in range(rounds):
        if k < races:
            # Everyone begins a migration of the same VM at once: one must win.
            _sync(f"race {k}")
            attempt = _record(f"race{k}-w{me}", SHARED_VM, float(k))
            try:
                journal.begin(attempt)
                won.append(k)
            except Conflict:
                pass
            _sync(f"tried {k}")  # the winner still holds the VM while the others try
            if won and won[-1] == k:
                journal.save(_advance(attempt, Phase.CANCELLED))
            _sync(f"released {k}")
        record = _record(f"w{me}-r{k}", f"vm-{me}-{k}", float(k))
        journal.begin(record)
        for phase in PATH[1:]:
            record = _advance(record, phase)
            journal.save(record)
            if phase is Phase.TRANSFERRING:
                journal.request_cancel(record.id)
                assert record.id in journal.cancel_requests()
                with suppress(NotFound):  # a neighbour's record: maybe not begun yet
                    journal.request_cancel(f"w{(me + 1) % workers}-r{k}")
            assert journal.get(record.id) == record
            journal.list(limit=10)
        mine.append(record.id)
        # A fresh connection, as each CLI command opens, sees the write just made; so does
        # a connect() in this process, which opens its own journal beside ``journal``.
        fresh = Journal(path)
        assert fresh.get(record.id).phase is Phase.COMPLETED
        assert fresh.estate_of(record.id) == ESTATE
        fresh.list()
        fresh.close()
        with vmmove.connect("sim://") as conn:
            assert conn.store.get(record.id) == record
        conn.store.close()  # type: ignore[attr-defined]
    journal.close()
    return {"mine": mine, "won": won}


def _main() -> None:
    path, me, workers, rounds, races = sys.argv[1], *map(int, sys.argv[2:6])
    try:
        result: dict[str, Any] = {"ok": _worker(path, me, workers, rounds, races)}
    except BaseException:
        result = {"error": traceback.format_exc()}
    print("result " + json.dumps(result), flush=True)


# ---- the test ---------------------------------------------------------------------------
def _line(p: subprocess.Popen[str]) -> str:
    out: IO[str] | None = p.stdout
    assert out is not None
    return out.readline().strip()


def _barrier(procs: list[subprocess.Popen[str]], token: str) -> None:
    for i, p in enumerate(procs):
        line = _line(p)
        assert line == token, f"worker {i} said {line!r} instead of {token!r}"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def _run(path: Path, workers: int, rounds: int, races: int) -> list[dict[str, Any]]:
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, __file__, str(path), *map(str, (i, workers, rounds, races))],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "VMMOVE_JOURNAL": str(path)},
                )
            )
            for i in range(workers)
        ]

        def kill() -> None:
            for p in procs:
                if p.poll() is None:
                    p.kill()

        # A hung worker is killed: the test reads EOF and fails instead of hanging.
        watchdog = threading.Timer(DEADLINE, kill)
        watchdog.start()
        stack.callback(watchdog.cancel)
        stack.callback(kill)  # runs first on the way out, before Popen waits for each
        _barrier(procs, "start")
        for k in range(races):
            _barrier(procs, f"race {k}")
            _barrier(procs, f"tried {k}")
            _barrier(procs, f"released {k}")
        results = []
        for i, p in enumerate(procs):
            line = _line(p)
            assert line.startswith("result "), f"worker {i} said {line!r}"
            result = json.loads(line.removeprefix("result "))
            assert "error" not in result, f"worker {i} failed:\n{result['error']}"
            results.append(result["ok"])
        for p in procs:
            assert p.wait() == 0
        return results


@pytest.mark.parametrize("workers", [2, 5])
def test_processes_hammering_one_journal_lose_nothing(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "journal.sqlite3"  # does not exist yet: the workers create it together
    rounds, races = 8, 4
    results = _run(path, workers, rounds, races)

    journal = Journal(path, estate=ESTATE)
    on_disk = {r.id: r for r in journal.list()}
    # No lost write: every record every worker wrote, with its final phase and full history.
    for me, result in enumerate(results):
        assert result["mine"] == [f"w{me}-r{k}" for k in range(rounds)]
        for record_id in result["mine"]:
            record = on_disk[record_id]
            assert record.phase is Phase.COMPLETED
            assert [t.phase for t in record.history] == list(PATH)
            assert record.vm_host == "host-b"
    # The per-VM lock held across processes: one winner per race, the losers wrote nothing.
    for k in range(races):
        winners = [me for me, result in enumerate(results) if k in result["won"]]
        assert len(winners) == 1, f"race {k}: winners {winners}"
        assert on_disk[f"race{k}-w{winners[0]}"].phase is Phase.CANCELLED
        assert [rid for rid in on_disk if rid.startswith(f"race{k}-")] == [f"race{k}-w{winners[0]}"]
    assert len(on_disk) == workers * rounds + races
    # Every record ended: no lock and no cancel request is left behind.
    assert journal.cancel_requests() == set()
    journal.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM locks").fetchone() == (0,)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


if __name__ == "__main__":
    _main()
