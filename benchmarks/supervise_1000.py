"""Supervise 1,000 concurrent simulated migrations on the virtual clock.

Prints wall time, CPU time and peak memory of the supervising process, with the durable
journal on (every transition written to SQLite before it is acted on) and off, and the
ratio to a baseline measured in the same run: the simulator's physics driving the same
1,000 jobs to completion with no engine on top (what the engine adds).

Targets (issue #2): under 5 s and 300 MB on a 2-core machine.
Run: python benchmarks/supervise_1000.py [--n 1000]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import vmmove
from vmmove.journal import Journal
from vmmove.machine import Phase
from vmmove.model import MigrationMode, MigrationSpec
from vmmove.policy import PRESETS
from vmmove.sim import SimBackend, parse
from vmmove.store import MemoryStore


def estate(n: int, seed: int = 7) -> dict[str, object]:
    # Ten migrations share each 10 GbE source link (~117 MiB/s each): every guest here
    # dirties memory slower than that, so all of them converge under the default policy.
    rng = random.Random(seed)
    sources = max(n // 10, 1)
    hosts = [{"name": f"src-{i}", "memory_gib": 512} for i in range(sources)]
    hosts += [{"name": f"dst-{i}", "memory_gib": 512} for i in range(sources)]
    vms = []
    for i in range(n):
        mem = rng.choice([1024, 2048, 4096, 8192])
        vms.append(
            {
                "name": f"vm-{i}",
                "host": f"src-{i % sources}",
                "memory_mib": mem,
                "working_set_mib": mem // rng.choice([4, 8, 16]),
                "dirty_mib_s": rng.choice([0, 5, 20, 50]),
            }
        )
    return {"link_mib_s": 1170, "host": hosts, "vm": vms}


def run_engine(n: int, journal: Path | None) -> tuple[float, float, int]:
    store = Journal(journal) if journal else MemoryStore()
    conn = vmmove.connect("sim://", inventory=parse(estate(n)), store=store)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        conn.migrate(spec=MigrationSpec(vm=f"vm-{i}", target=f"dst-{i % max(n // 10, 1)}"))
    records = conn.wait_all()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = sum(r.phase is Phase.COMPLETED for r in records)
    return wall, cpu, done


def run_physics_only(n: int) -> float:
    """The baseline: the same jobs, stepped by the simulator alone at the same poll rate."""
    backend = SimBackend(parse(estate(n)))
    clock = backend.clock
    t0 = time.perf_counter()
    jobs = []
    for i in range(n):
        vm = backend.vm(f"vm-{i}")
        target = backend.host(f"dst-{i % max(n // 10, 1)}")
        spec = MigrationSpec(vm=vm.id, target=target.id)
        jobs.append(
            backend.start(
                vm,
                target,
                spec,
                MigrationMode.LIVE,
                policy=PRESETS["balanced"],
                needs=frozenset(),
                reservation=None,
            )
        )
    for _ in range(100_000):
        if not jobs:
            break
        clock.advance_to(clock.now() + backend.poll_interval)  # type: ignore[attr-defined]
        jobs = [j for j in jobs if not backend.poll(j).phase.terminal]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    baseline = run_physics_only(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "journal.sqlite3"
        tracemalloc.start()
        run_engine(args.n, journal)
        _, peak_traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # Timed runs untraced (tracemalloc slows Python several-fold), each on a fresh file.
        journal.unlink()
        wall, cpu, done = run_engine(args.n, journal)
    mem_wall, _, _ = run_engine(args.n, None)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"migrations            {args.n} ({done} completed)")
    print(f"baseline (physics)    {baseline:.2f} s wall")
    print(f"engine, journal on    {wall:.2f} s wall, {cpu:.2f} s CPU  (target < 5 s)")
    print(f"engine, in memory     {mem_wall:.2f} s wall")
    ratios = f"{wall / baseline:.2f}x (journal), {mem_wall / baseline:.2f}x (memory)"
    print(f"ratio engine/base     {ratios}")
    print(f"peak RSS              {rss_mb:.0f} MB  (target < 300 MB)")
    print(f"peak traced alloc     {peak_traced / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
