"""Several workers on one estate: 3 worker processes against 1, same estate, same limits.

Starts its own PostgreSQL (vmmove.testing.pgserver) and simulator server, queues N moves,
and times N migrations driven to completion by 1 worker, then by 3 (a fresh estate and
schema each). A worker drives at most --capacity migrations at once (one process's share);
the estate's limits (per source and target host) are the same for both runs. Prints the
ratio, the PostgreSQL transactions per migration (each journal statement is one round trip
and one transaction), and the take-over latency: SIGKILL one of 3 workers mid-run and time
until every one of its in-flight records has another owner.

Also printed, so the figures can be judged: which limit binds (the most migrations seen in
flight, from the records' timestamps, per worker and per host, against the capacity and
the estate's limits), and the machine's CPU during each run (2 cores are shared by
PostgreSQL, the simulator server and the workers), by process.

Targets (issue #18): 3 workers >= 2.5x faster than 1; take-over within lease + 2 s.
Run: python benchmarks/workers.py [--n 3000] [--speed 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

import vmmove
from vmmove.fleet import Limits
from vmmove.journals.postgres import PgJournal
from vmmove.testing.pgserver import PostgresServer

LEASE = 3.0


def write_estate(path: Path, n: int) -> int:
    sources = max(n // 25, 4)
    lines = ["link_mib_s = 1170", ""]
    for kind in ("src", "dst"):
        for i in range(sources):
            lines += ["[[host]]", f'name = "{kind}-{i}"', "memory_gib = 2048", ""]
    for i in range(n):
        lines += ["[[vm]]", f'name = "vm-{i}"', f'host = "src-{i % sources}"']
        lines += ["memory_mib = 2048", "working_set_mib = 256", "dirty_mib_s = 10", ""]
    path.write_text("\n".join(lines))
    return sources


def enable_statement_counts(pg: PostgresServer) -> bool:
    """pg_stat_statements, where the server has it: statements sent are round trips."""
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as db:
            db.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        pg.restart()
        with psycopg.connect(pg.dsn, autocommit=True) as db:
            db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return True
    except psycopg.Error:
        return False


def counters(dsn: str, statements: bool) -> tuple[int, int]:
    """(transactions committed, statements run): the second 0 without pg_stat_statements.
    Transactions include each listening connection's wake-up on every NOTIFY."""
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        calls = 0
        if statements:
            got = db.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE query NOT LIKE '%pg_stat%'"
            ).fetchone()
            calls = int(got[0]) if got else 0
    return int(row[0]), calls


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4]) / tick, sum(v) / tick


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a live process (with its reaped children's)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(pg: PostgresServer) -> float:
    """The postmaster, its reaped backends and its live ones."""
    root = pg.pid()
    if root is None:
        return 0.0
    total = proc_cpu(root, children=True)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if parent == root:
                total += proc_cpu(int(pid))
    return total


def in_flight(dsn: str) -> dict[str, Any]:
    """The most migrations in flight at once (from each record's first and last transition,
    on the simulator's time line that every worker shares): in all, per worker (the
    record's last owner), per source and per target host."""
    with psycopg.connect(dsn, autocommit=True) as db:
        rows = db.execute("SELECT owner, body FROM vmmove_records").fetchall()
    spans: list[tuple[float, float, tuple[str, ...]]] = []
    for owner, body in rows:
        r = json.loads(body)
        keys = ("all", f"w:{owner}", f"s:{r['source']}", f"t:{r['target']}")
        spans.append((r["history"][0]["at"], r["history"][-1]["at"], keys))
    events = sorted(
        [(start, 1, keys) for start, _, keys in spans]
        + [(end, -1, keys) for _, end, keys in spans],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    level: dict[str, int] = {}
    peak: dict[str, int] = {}
    for _, step, keys in events:
        for key in keys:
            level[key] = level.get(key, 0) + step
            peak[key] = max(peak.get(key, 0), level[key])
    return {
        "total": peak.get("all", 0),
        "per_worker": max((v for k, v in peak.items() if k.startswith("w:")), default=0),
        "per_source": max((v for k, v in peak.items() if k.startswith("s:")), default=0),
        "per_target": max((v for k, v in peak.items() if k.startswith("t:")), default=0),
    }


def run(
    pg: PostgresServer, n: int, workers: int, args: Any, *, stats: bool, kill: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "estate.toml"
        sources = write_estate(inventory, n)
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmmove.sim",
                "serve",
                "--speed",
                str(args.speed),
                "--inventory",
                str(inventory),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sim.stdout is not None
        uri = sim.stdout.readline().strip()
        dsn = pg.schema_dsn(f"b_{uuid.uuid4().hex[:10]}")
        procs: list[subprocess.Popen[str]] = []
        try:
            limits = Limits(per_source=args.per_host, per_target=args.per_host, per_cluster=10**6)
            with vmmove.connect(uri, journal=dsn) as conn:
                for i in range(n):
                    conn.submit(f"vm-{i}", f"dst-{(i * 7) % sources}", limits=limits)
            if stats:
                with psycopg.connect(pg.dsn, autocommit=True) as db:
                    db.execute("SELECT pg_stat_statements_reset()")
            txns0, calls0 = counters(pg.dsn, stats)
            cpu0, sim0, pg0 = machine_cpu(), proc_cpu(sim.pid), postgres_cpu(pg)
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            for k in range(workers):
                cmd = [sys.executable, "-m", "vmmove.cli", "--uri", uri, "worker"]
                cmd += ["--journal", dsn, "--capacity", str(args.capacity), "--lease", str(LEASE)]
                cmd += ["--id", f"w{k}", "--until-idle"]
                procs.append(subprocess.Popen(cmd, stderr=subprocess.DEVNULL))
            takeover = None
            if kill:
                takeover = measure_takeover(dsn, procs[1])
            for p in procs:
                p.wait()
            wall = time.perf_counter() - t0
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu1, sim1, pg1 = machine_cpu(), proc_cpu(sim.pid), postgres_cpu(pg)
            txns1, calls1 = counters(pg.dsn, stats)
            journal = PgJournal(dsn)
            done = sum(r.phase.value == "completed" for r in journal.list())
            journal.close()
            busy, total = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            return {
                "wall": wall,
                "txns": txns1 - txns0,
                "calls": calls1 - calls0,
                "done": done,
                "takeover": takeover,
                "sources": sources,
                "flight": in_flight(dsn),
                "busy": busy / total if total else 0.0,
                "cpu": {
                    "workers": kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime,
                    "simulator": sim1 - sim0,
                    "postgres": pg1 - pg0,
                    "machine": busy,
                },
            }
        finally:
            for p in [*procs, sim]:
                if p.poll() is None:
                    p.kill()
                p.wait()


def measure_takeover(dsn: str, victim: subprocess.Popen[str]) -> float:
    """Kill w1 once it drives transfers; seconds until all its records have another owner."""
    journal = PgJournal(dsn)
    state: dict[str, Any] = {"held": set(), "killed": None, "done": None}
    ready = threading.Event()
    finished = threading.Event()

    def seen(m: dict[str, Any]) -> None:
        if m.get("k") != "rec":
            return
        if state["killed"] is None and m.get("owner") == "w1":
            if m.get("phase") == "transferring":
                ready.set()
        elif state["killed"] is not None and m.get("owner") not in ("w1", ""):
            state["held"].discard(m.get("id"))
            if not state["held"]:
                finished.set()

    journal.listener().subscribers.append(seen)
    ready.wait(120)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state["killed"] = time.monotonic()
    held = journal.query("SELECT id FROM vmmove_records WHERE owner = 'w1' AND NOT terminal")
    state["held"] = {r[0] for r in held}
    if state["held"]:
        finished.wait(120)
    took = time.monotonic() - state["killed"]
    journal.close()
    return took


def show(label: str, r: dict[str, Any], n: int) -> None:
    f, c = r["flight"], r["cpu"]
    print(
        f"{label:<24}{r['wall']:.1f} s ({r['done']} completed); in flight at most "
        f"{f['total']} (per worker {f['per_worker']}, per source {f['per_source']}, "
        f"per target {f['per_target']})"
    )
    print(
        f"{'':<24}CPU {c['machine']:.1f} s of 2 cores x {r['wall']:.1f} s = "
        f"{r['busy'] * 100:.0f}% busy (workers {c['workers']:.1f} s, simulator "
        f"{c['simulator']:.1f} s, PostgreSQL {c['postgres']:.1f} s; "
        f"{c['machine'] / n * 1000:.1f} ms per migration)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--speed", type=float, default=20.0)
    parser.add_argument("--capacity", type=int, default=10, help="migrations per worker at once")
    parser.add_argument("--per-host", type=int, default=4, help="limit per source and target")
    parser.add_argument("--no-takeover", action="store_true", help="skip the SIGKILL run")
    args = parser.parse_args()
    with PostgresServer() as pg:
        stats = enable_statement_counts(pg)
        one = run(pg, args.n, 1, args, stats=stats)
        three = run(pg, args.n, 3, args, stats=stats)
        killed = None
        if not args.no_takeover:
            killed = run(pg, min(args.n, 300), 3, args, stats=stats, kill=True)
    n = args.n
    room = one["sources"] * args.per_host
    print(
        f"migrations              {n} (speed {args.speed:g}x, capacity {args.capacity}/worker, "
        f"{args.per_host} per source and per target host, {one['sources']} of each)"
    )
    f = one["flight"]
    binds = (
        f"its capacity ({args.capacity}: at most {f['per_worker']} seen in flight, hosts at "
        f"most {max(f['per_source'], f['per_target'])} of {args.per_host})"
        if f["per_worker"] >= args.capacity
        and max(f["per_source"], f["per_target"]) < args.per_host
        else "the estate's limits, not its capacity"
    )
    enough = ">=" if room >= 3 * args.capacity else "< (the estate binds 3 workers)"
    print(f"limits                  1 worker is bound by {binds}")
    print(f"{'':<24}the estate's limits allow {room} in flight {enough} 3 x {args.capacity}")
    show("1 worker", one, n)
    show("3 workers", three, n)
    print(f"ratio 1/3               {one['wall'] / three['wall']:.2f}x  (target >= 2.5x)")
    if stats:
        print(
            f"PG round trips/migr.    {one['calls'] / n:.1f} (1 worker), "
            f"{three['calls'] / n:.1f} (3): statements sent, BEGIN/COMMIT included"
        )
    print(
        f"PG transactions/migr.   {one['txns'] / n:.1f} (1 worker), {three['txns'] / n:.1f} (3): "
        "with each listening connection's wake-up on every NOTIFY"
    )
    if killed is not None:
        print(
            f"take-over after SIGKILL {killed['takeover']:.2f} s  "
            f"(lease {LEASE:g} s; target <= lease + 2 s)"
        )


if __name__ == "__main__":
    main()
