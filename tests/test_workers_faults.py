"""Three worker processes, one simulator server process, one real PostgreSQL, a few hundred
queued migrations, and a fault in the middle: SIGKILL a worker mid-transfer; SIGSTOP one
past its lease, then SIGCONT it; restart PostgreSQL under them; cut one worker's database
connections. Afterwards the same checks for all: every migration terminal, each VM where
its record says, none moved twice, no limit exceeded at any instant (from the records'
timestamps), nothing lost.

Every wait is on something that happens: a worker's "ready" line, a journal notification,
a process exit; a watchdog bounds each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

import vmmove
from vmmove.fleet import Limits
from vmmove.journals.postgres import PgJournal
from vmmove.machine import Phase
from vmmove.testing.pgserver import PostgresServer

N_VMS = 240  # the issue asks 300; sized for a 2-core CI budget (docs/workers.md)
SOURCES = 12
PER_SOURCE = 4
PER_TARGET = 4
LEASE = 3.0
SPEED = 4.0
WATCHDOG = 120.0


def _estate(path: Path) -> None:
    lines = ["link_mib_s = 1170", ""]
    for kind in ("src", "dst"):
        for i in range(SOURCES):
            lines += ["[[host]]", f'name = "{kind}-{i}"', "memory_gib = 512", ""]
    for i in range(N_VMS):
        lines += [
            "[[vm]]",
            f'name = "vm-{i}"',
            f'host = "src-{i % SOURCES}"',
            f"memory_mib = {1024 + 512 * (i % 3)}",
            "working_set_mib = 128",
            f"dirty_mib_s = {5 * (i % 4)}",
            "",
        ]
    path.write_text("\n".join(lines))


@dataclass
class Estate:
    sim_uri: str
    dsn: str
    sim: subprocess.Popen[str]
    workers: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, what: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: what(self.events), timeout), "watchdog ran out"


@pytest.fixture
def estate(tmp_path: Path, pg_dsn: str) -> Iterator[Estate]:
    inventory = tmp_path / "estate.toml"
    _estate(inventory)
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmmove.sim",
            "serve",
            "--speed",
            str(SPEED),
            "--inventory",
            str(inventory),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sim.stdout is not None
    uri = sim.stdout.readline().strip()
    assert uri.startswith("sim+http://")
    est = Estate(sim_uri=uri, dsn=pg_dsn, sim=sim)
    journal = PgJournal(pg_dsn)  # the test's own eye on the journal: notifications

    def seen(message: dict[str, Any]) -> None:
        with est.cond:
            est.events.append(message)
            est.cond.notify_all()

    journal.listener().subscribers.append(seen)
    try:
        yield est
    finally:
        for p in [*est.workers.values(), sim]:
            if p.poll() is None:
                p.kill()
            p.wait(30)
        journal.close()


def _submit(est: Estate) -> None:
    with vmmove.connect(est.sim_uri, journal=est.dsn) as conn:
        limits = Limits(per_source=PER_SOURCE, per_target=PER_TARGET, per_cluster=10_000)
        for i in range(N_VMS):
            conn.submit(f"vm-{i}", f"dst-{(i * 7) % SOURCES}", limits=limits)


def _start_workers(est: Estate) -> None:
    for n in range(3):
        name = f"w{n}"
        cmd = [sys.executable, "-m", "vmmove.cli", "--uri", est.sim_uri, "worker"]
        cmd += ["--journal", est.dsn, "--lease", str(LEASE), "--capacity", "20"]
        cmd += ["--id", name, "--until-idle"]
        p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        est.workers[name] = p
    for p in est.workers.values():
        assert p.stderr is not None
        for line in p.stderr:
            if line.startswith("ready "):
                break
        threading.Thread(target=p.stderr.read, daemon=True).start()  # drain the rest


def _in_transfer(owner: str) -> Callable[[list[dict[str, Any]]], bool]:
    def check(events: list[dict[str, Any]]) -> bool:
        return (
            sum(1 for e in events if e.get("owner") == owner and e.get("phase") == "transferring")
            >= 3
        )

    return check


def _finish(est: Estate, skip: tuple[str, ...] = ()) -> None:
    for name, p in est.workers.items():
        if name in skip:
            continue
        assert p.wait(WATCHDOG) == 0, f"worker {name} exited {p.returncode}"


def _verify(est: Estate) -> dict[str, Any]:
    journal = PgJournal(est.dsn)
    conn = vmmove.connect(est.sim_uri, journal="off")
    try:
        records = journal.list()
        queue = journal.query("SELECT id, vm, state, attempts, note FROM vmmove_queue")
        # Nothing lost: every queued move ended, none refused or left behind.
        assert len(queue) == N_VMS
        assert Counter(q[2] for q in queue) == {"done": N_VMS}, [q for q in queue if q[2] != "done"]
        assert all(r.phase.terminal for r in records)
        by_vm: dict[str, list[Any]] = defaultdict(list)
        for r in records:
            by_vm[r.vm].append(r)
        log = conn.backend.action_log()  # type: ignore[attr-defined]
        starts = Counter(e["vm"] for e in log if e["call"] == "start")
        for vm in conn.vms():
            done = [r for r in by_vm[vm.id] if r.phase is Phase.COMPLETED]
            # Moved exactly once, and where its record says.
            assert len(done) == 1, (vm.name, [(r.id, r.phase) for r in by_vm[vm.id]])
            assert done[0].vm_host == vm.host == done[0].target
            assert conn.backend.locate(vm.id) == vm.host
            assert starts[vm.id] == 1, (vm.name, starts[vm.id])
            for other in by_vm[vm.id]:  # any other attempt never moved it
                if other is not done[0]:
                    assert other.phase is Phase.CANCELLED
                    assert other.vm_host == other.source
        # No limit exceeded at any instant, from the records' own timestamps.
        for key, limit in (("source", PER_SOURCE), ("target", PER_TARGET)):
            points: list[tuple[float, int]] = []
            per: dict[str, list[tuple[float, int]]] = defaultdict(list)
            for r in records:
                host = r.source if key == "source" else r.target
                if host:
                    per[host] += [(r.created_at, 1), (r.updated_at, -1)]
            for host, points in per.items():
                level = 0
                for _, step in sorted(points, key=lambda p: (p[0], p[1])):
                    level += step
                    assert level <= limit, f"{limit} per {key} exceeded on {host}"
        return {"records": len(records), "log": log}
    finally:
        conn.close()
        journal.close()


def _owned(est: Estate, owner: str) -> set[str]:
    with est.cond:
        mine = {e["id"] for e in est.events if e.get("k") == "rec" and e.get("owner") == owner}
        ended = {
            e["id"]
            for e in est.events
            if e.get("k") == "rec" and e.get("phase") in ("completed", "failed", "cancelled")
        }
    return mine - ended


def test_sigkill_a_worker_mid_transfer(estate: Estate) -> None:
    _submit(estate)
    _start_workers(estate)
    estate.wait_for(_in_transfer("w1"))
    victim = _owned(estate, "w1")
    estate.workers["w1"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert estate.workers["w1"].wait(30) == -signal.SIGKILL
    # Every one of its migrations is adopted by another worker, within lease + 2 s.
    estate.wait_for(
        lambda ev: (
            victim
            <= {e["id"] for e in ev if e.get("k") == "rec" and e.get("owner") not in ("w1", "")}
        )
    )
    assert time.monotonic() - killed <= LEASE + 2.0
    _finish(estate, skip=("w1",))
    _verify(estate)


def test_sigstop_past_the_lease_then_sigcont_acts_no_more(estate: Estate) -> None:
    _submit(estate)
    _start_workers(estate)
    estate.wait_for(_in_transfer("w2"))
    frozen = estate.workers["w2"]
    frozen.send_signal(signal.SIGSTOP)
    held = _owned(estate, "w2")
    assert held
    # Until every record it held was adopted by another worker (its lease expired).
    estate.wait_for(
        lambda ev: (
            held
            <= {e["id"] for e in ev if e.get("k") == "rec" and e.get("owner") not in ("w2", "")}
        )
    )
    resumed = time.monotonic()
    frozen.send_signal(signal.SIGCONT)
    _finish(estate)
    result = _verify(estate)
    # After SIGCONT it did nothing to the records it had held: no platform action on them.
    late = [
        e
        for e in result["log"]
        if e["client"] == f"pid-{frozen.pid}"
        and e["mono"] > resumed
        and e["vm"] in _vms_of(estate, held)
    ]
    assert late == []


def _vms_of(est: Estate, record_ids: set[str]) -> set[str]:
    journal = PgJournal(est.dsn)
    try:
        return {journal.get(r).vm for r in record_ids}
    finally:
        journal.close()


def test_postgresql_restarts_under_the_workers(estate: Estate, pg_server: PostgresServer) -> None:
    _submit(estate)
    _start_workers(estate)
    estate.wait_for(_in_transfer("w0"))
    pg_server.restart()
    _finish(estate)
    _verify(estate)


def test_one_worker_loses_its_database_connection(
    estate: Estate, pg_server: PostgresServer
) -> None:
    _submit(estate)
    _start_workers(estate)
    estate.wait_for(_in_transfer("w0"))
    with psycopg.connect(pg_server.dsn, autocommit=True) as db:
        cut = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            ("vmmove w0",),
        ).fetchall()
    assert cut  # its connections existed and were cut
    _finish(estate)
    _verify(estate)


def test_queue_input_is_checked_and_nothing_changes(estate: Estate) -> None:
    with vmmove.connect(estate.sim_uri, journal=estate.dsn) as conn:
        with pytest.raises(vmmove.NotFound):
            conn.submit("no-such-vm", "dst-0")
        with pytest.raises(vmmove.PrecheckFailed):
            conn.submit("vm-0", "src-0")  # it runs there already
        item = conn.submit("vm-0", "dst-1")
        with pytest.raises(vmmove.Conflict):
            conn.submit("vm-0", "dst-2")  # one queued move per VM
        journal = PgJournal(estate.dsn)
        rows = journal.query("SELECT id, state FROM vmmove_queue")
        assert rows == [(item, "queued")]
        from vmmove.worker.queue import cancel_item

        assert cancel_item(journal, item) == "cancelled"
        assert journal.query("SELECT state FROM vmmove_queue") == [("cancelled",)]
        journal.close()
    assert json.dumps(estate.events)  # notifications arrived as JSON
    assert os.environ.get("VMMOVE_JOURNAL")  # untouched by the test: the conftest's file
