"""Several workers on one estate: 3 worker processes against 1, same estate, same limits.

Starts its own PostgreSQL (vmmove.testing.pgserver) and simulator server, queues N moves,
and times N migrations driven to completion by 1 worker, then by 3 (a fresh estate and
schema each). A worker drives at most --capacity migrations at once (one process's share);
the estate's limits (per source and target host) are the same for both runs. Prints the
ratio, the PostgreSQL transactions per migration (each journal statement is one round trip
and one transaction), and the take-over latency: SIGKILL one of 3 workers mid-run and time
until every one of its in-flight records has another owner.

Targets (issue #18): 3 workers >= 2.5x faster than 1; take-over within lease + 2 s.
Run: python benchmarks/workers.py [--n 3000] [--speed 20]
"""

from __future__ import annotations

import argparse
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


def commits(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def run(pg: PostgresServer, n: int, workers: int, args: Any, kill: bool = False) -> dict[str, Any]:
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
            before = commits(pg.dsn)
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
            txns = commits(pg.dsn) - before
            journal = PgJournal(dsn)
            done = sum(r.phase.value == "completed" for r in journal.list())
            journal.close()
            return {"wall": wall, "txns": txns, "done": done, "takeover": takeover}
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--speed", type=float, default=20.0)
    parser.add_argument("--capacity", type=int, default=10, help="migrations per worker at once")
    parser.add_argument("--per-host", type=int, default=4, help="limit per source and target")
    args = parser.parse_args()
    with PostgresServer() as pg:
        one = run(pg, args.n, 1, args)
        three = run(pg, args.n, 3, args)
        killed = run(pg, min(args.n, 300), 3, args, kill=True)
    print(
        f"migrations              {args.n} (speed {args.speed:g}x, capacity {args.capacity}/worker)"
    )
    print(f"1 worker                {one['wall']:.1f} s ({one['done']} completed)")
    print(f"3 workers               {three['wall']:.1f} s ({three['done']} completed)")
    print(f"ratio 1/3               {one['wall'] / three['wall']:.2f}x  (target >= 2.5x)")
    print(
        f"PG transactions/migr.   {one['txns'] / args.n:.1f} (1 worker), "
        f"{three['txns'] / args.n:.1f} (3)"
    )
    print(
        f"take-over after SIGKILL {killed['takeover']:.2f} s  "
        f"(lease {LEASE:g} s; target <= lease + 2 s)"
    )


if __name__ == "__main__":
    main()
