"""Supervise 1,000 concurrent migrations through the fleet executor (issue #6, benchmark 3).

Four runs, each in its own process so its peak memory is its own:

- ``engine`` / ``executor``, on the simulator's virtual clock: the estate of
  ``supervise_1000.py`` (1,000 guests of 1-8 GiB, ten per 10 GbE source link, 100 targets);
  ``conn.migrate()`` x 1,000 then ``wait_all()`` (supervise_1000's run), against the same
  1,000 moves as a plan run by the fleet executor with limits that let all 1,000 run at once
  (10 per source, 10 per target). Total CPU for the whole run, simulator included.
- ``engine-rt`` / ``executor-rt``, in real time: the same two ways against a backend whose
  jobs answer a poll in O(1) (each "migration" runs 20-29 s, polled every 0.5 s, as the
  simulator is), so the figures are those of the supervising process alone: CPU seconds per
  wall second is the share of one core it needs while 1,000 migrations run. (On a real clock
  the simulator itself advances every link at every poll, which costs more than the
  supervision: it is left out here.)

Targets: under one core and 300 MB. Records are kept in memory (``MemoryStore``); the
durable journal's cost is measured by ``supervise_1000.py``.
Run: python benchmarks/fleet_supervise.py [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import vmmove
from vmmove import fleet
from vmmove.backend import Backend, Capabilities, Job, JobStatus, Reservation
from vmmove.engine import Connection
from vmmove.machine import Phase
from vmmove.model import (
    Capacity,
    Figures,
    GiB,
    HostInfo,
    MigrationMode,
    MigrationSpec,
    PowerState,
    VMInfo,
)
from vmmove.plugins import load_plugins
from vmmove.policy import Policy
from vmmove.sim import parse

sys.path.insert(0, str(Path(__file__).parent))
from supervise_1000 import estate, run_engine


class TimedBackend(Backend):
    """Jobs that take a fixed time and answer polls from the clock alone."""

    scheme = "timed"
    capabilities = Capabilities(live=True, cold=True, cancel=True, progress_bytes=True)
    poll_interval = 0.5

    def __init__(self, n: int) -> None:
        sources = max(n // 10, 1)
        self._hosts = {
            f"{kind}-{i}": HostInfo(
                id=f"{kind}-{i}", name=f"{kind}-{i}", capacity=Capacity(cpus=64, memory=512 * GiB)
            )
            for kind in ("src", "dst")
            for i in range(sources)
        }
        self._vms = {
            f"vm-{i}": VMInfo(
                id=f"vm-{i}", name=f"vm-{i}", host=f"src-{i % sources}",
                power=PowerState.RUNNING, memory=4 * GiB, vcpus=2,
            )
            for i in range(n)
        }  # fmt: skip
        self._jobs: dict[str, tuple[float, float, str, str]] = {}
        self._aborted: set[str] = set()
        self._lock = threading.Lock()

    def hosts(self) -> list[HostInfo]:
        return list(self._hosts.values())

    def host(self, ref: str) -> HostInfo:
        return self._hosts[ref]

    def vms(self) -> list[VMInfo]:
        return list(self._vms.values())

    def vm(self, ref: str) -> VMInfo:
        return self._vms[ref]

    def start(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        policy: Policy,
        needs: frozenset[str],
        reservation: Reservation | None,
        request_id: str = "",
    ) -> Job:
        duration = 20.0 + int(vm.id.split("-")[1]) % 10
        with self._lock:
            self._jobs[vm.id] = (self.clock.now(), duration, vm.host, target.id)
        return Job(id=vm.id, vm=vm.id, source=vm.host, target=target.id, mode=mode)

    def poll(self, job: Job) -> JobStatus:
        t0, duration, source, target = self._jobs[job.id]
        elapsed = self.clock.now() - t0
        total = 4 * GiB
        if job.id in self._aborted:
            return JobStatus(phase=Phase.CANCELLED, native="cancelled", vm_host=source)
        if elapsed < 1.0:
            return JobStatus(phase=Phase.REQUESTING, native="setup")
        if elapsed < duration:
            left = int(total * (duration - elapsed) / (duration - 1.0))
            return JobStatus(
                phase=Phase.TRANSFERRING, native="copy", data_total=total,
                data_processed=total - left, data_remaining=left,
                transfer_rate=total / (duration - 1.0), dirty_rate=0.0, iteration=1,
            )  # fmt: skip
        with self._lock:
            vm = self._vms[job.id]
            if vm.host != target:
                self._vms[job.id] = VMInfo(
                    id=vm.id, name=vm.name, host=target, power=vm.power,
                    memory=vm.memory, vcpus=vm.vcpus,
                )  # fmt: skip
        return JobStatus(
            phase=Phase.COMPLETED, native="done", vm_host=target,
            figures=Figures(total_time=duration, data_sent=total, iterations=1),
        )  # fmt: skip

    def abort(self, job: Job) -> None:
        self._aborted.add(job.id)

    def locate(self, vm_id: str) -> str | None:
        return self._vms[vm_id].host


def realtime(n: int, executor: bool) -> dict[str, float]:
    backend = TimedBackend(n)
    conn = Connection(backend, uri="timed://", plugins=load_plugins(), store=vmmove.MemoryStore())
    sources = max(n // 10, 1)
    t0, c0 = time.perf_counter(), time.process_time()
    if executor:
        plan = fleet.moves(conn, {f"vm-{i}": f"dst-{i % sources}" for i in range(n)})
        limits = fleet.Limits(per_source=10, per_target=10, per_cluster=None)
        report = fleet.execute(conn, plan, limits, link_aware=False)
        spans = [(a.started_at, a.ended_at) for o in report.outcomes for a in o.attempts]
        moved = len(report.moved)
    else:
        for i in range(n):
            conn.migrate(f"vm-{i}", to=f"dst-{i % sources}")
        records = conn.wait_all()
        spans = [(r.created_at, r.history[-1].at) for r in records]
        moved = sum(1 for r in records if r.phase is Phase.COMPLETED)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    conn.close()
    return {"wall": wall, "cpu": cpu, "moved": moved, "peak": peak}


def virtual_executor(n: int) -> dict[str, float]:
    sources = max(n // 10, 1)
    conn = vmmove.connect("sim://", inventory=parse(estate(n)), store=vmmove.MemoryStore())
    plan = fleet.moves(conn, {f"vm-{i}": f"dst-{i % sources}" for i in range(n)})
    limits = fleet.Limits(per_source=10, per_target=10, per_cluster=None)
    t0, c0 = time.perf_counter(), time.process_time()
    report = fleet.execute(conn, plan, limits, link_aware=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    spans = [(a.started_at, a.ended_at) for o in report.outcomes for a in o.attempts]
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    return {"wall": wall, "cpu": cpu, "moved": len(report.moved), "peak": peak}


def child(mode: str, n: int) -> None:
    out: Mapping[str, Any]
    if mode == "engine":
        wall, cpu, done = run_engine(n, None)
        out = {"wall": wall, "cpu": cpu, "moved": done, "peak": n}
    elif mode == "executor":
        out = virtual_executor(n)
    else:
        out = realtime(n, executor=mode == "executor-rt")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({**out, "rss_mb": rss}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--mode", choices=["engine", "executor", "engine-rt", "executor-rt"])
    args = parser.parse_args()
    if args.mode:
        child(args.mode, args.n)
        return
    rows = {}
    for mode in ("engine", "executor", "engine-rt", "executor-rt"):
        cmd = [sys.executable, __file__, "--mode", mode, "--n", str(args.n)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    print(f"{args.n} concurrent migrations, each run in its own process")
    print(f"{'run':<12} {'moved':>6} {'peak':>5} {'wall':>8} {'CPU':>8} {'CPU/wall':>9} "
          f"{'CPU vs engine':>13} {'peak RSS':>9}")  # fmt: skip
    for mode, r in rows.items():
        base = rows["engine-rt" if mode.endswith("-rt") else "engine"]
        share = f"{r['cpu'] / r['wall']:>9.2f}" if mode.endswith("-rt") else f"{'-':>9}"
        print(
            f"{mode:<12} {r['moved']:>6.0f} {r['peak']:>5.0f} {r['wall']:>7.2f}s "
            f"{r['cpu']:>7.2f}s {share} {r['cpu'] / base['cpu']:>12.2f}x {r['rss_mb']:>6.0f} MB"
        )
    print("targets: under one core (CPU/wall in real time), under 300 MB")


if __name__ == "__main__":
    main()
