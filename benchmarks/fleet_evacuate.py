"""Evacuate a host of 200 VMs on the simulator's virtual clock (issue #6, benchmark 1).

One source host on 10 GbE (1170 MiB/s) holds 200 guests of 1-16 GiB: 60 % quiet
(0-20 MiB/s), 25 % medium (50-200 MiB/s), 15 % heavy writers (400-800 MiB/s over half their
memory), which converge only with most of the link. Twenty targets have room for all.

Three figures per policy and per-source limit, all in simulated seconds:

- bound: the physical lower bound, total data that must cross the link / link bandwidth,
  where each VM's data is what it sends when migrated alone with the whole link (measured
  on the simulator, one VM at a time, under the same policy);
- FIFO: VMs in inventory order, each started as soon as a slot frees, no retries
  (``order="plan"``, ``link_aware=False``, ``max_attempts=1``: a first-in-first-out drain
  like ``migrateall --maxworkers N``);
- vmmove: the fleet executor (longest predicted first, link-aware, retries).

Both runs use the same limits (per source N, per target 2) and the same plan targets.
Targets: vmmove makespan <= 1.1x the bound and >= 1.3x faster than FIFO, no VM aborted
where FIFO aborts some.

Run: python benchmarks/fleet_evacuate.py [--vms 200] [--seed 11]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from typing import Any

import vmmove
from vmmove import fleet
from vmmove.machine import Phase
from vmmove.model import MiB
from vmmove.sim import parse

LINK = 1170  # MiB/s


def estate(n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    hosts: list[dict[str, Any]] = [{"name": "src", "memory_gib": 2048, "cpus": 256}]
    hosts += [{"name": f"dst-{i:02d}", "memory_gib": 512, "cpus": 128} for i in range(20)]
    vms = []
    for i in range(n):
        mem = rng.choice([1024, 2048, 4096, 4096, 8192, 8192, 16384])
        kind = rng.random()
        if kind < 0.60:
            dirty, ws = rng.choice([0, 2, 5, 10, 20]), mem // 16
        elif kind < 0.85:
            dirty, ws = rng.choice([50, 100, 200]), mem // 8
        else:
            dirty, ws = rng.choice([400, 600, 800]), mem // 2
        vms.append(
            {
                "name": f"vm-{i:03d}",
                "host": "src",
                "memory_mib": mem,
                "dirty_mib_s": dirty,
                "working_set_mib": ws,
                "resident_mib": int(mem * rng.uniform(0.4, 0.9)),
            }
        )
    return {"link_mib_s": LINK, "host": hosts, "vm": vms}


def connect(inventory: dict[str, Any]) -> vmmove.Connection:
    return vmmove.connect("sim://", inventory=parse(inventory), store=vmmove.MemoryStore())


def bound(inventory: dict[str, Any], policy: str) -> tuple[float, int]:
    """Seconds the link needs for the data each VM sends alone at full speed, and that data."""
    total = 0
    for vm in inventory["vm"]:
        conn = connect({**inventory, "host": inventory["host"][:2], "vm": [vm]})
        record = conn.migrate(vm["name"], to="dst-00", policy=policy).wait()
        total += record.figures.data_sent or 0
    return total / (LINK * MiB), total


def run(
    inventory: dict[str, Any], policy: str, per_source: int, fifo: bool
) -> tuple[fleet.Report, dict[str, float]]:
    conn = connect(inventory)
    plan = fleet.evacuate(conn, "src", policy=policy)
    limits = fleet.Limits(per_source=per_source, per_target=2, per_cluster=None)
    t0 = time.process_time()
    if fifo:
        plan = replace(plan, moves=tuple(sorted(plan.moves, key=lambda m: m.vm_name)))
        report = fleet.execute(conn, plan, limits, order="plan", link_aware=False, max_attempts=1)
    else:
        report = fleet.execute(conn, plan, limits)
    cpu = time.process_time() - t0
    records = [conn.migration(a.migration).record for o in report.outcomes for a in o.attempts]
    throttled = sum(
        1 for r in records if any(s.applied and s.step.endswith("auto-converge") for s in r.steps)
    )
    downtimes = [r.figures.downtime_ms or 0.0 for r in records if r.phase is Phase.COMPLETED]
    return report, {
        "data": float(sum(r.figures.data_sent or 0 for r in records)),
        "throttled": float(throttled),
        "max_downtime_ms": max(downtimes, default=0.0),
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    inventory = estate(args.vms, args.seed)
    print(f"evacuating {args.vms} VMs from one host over a {LINK} MiB/s link (simulated seconds)")
    header = (
        f"{'policy':<9} {'out':>3} {'bound':>7} {'FIFO':>7} {'vmmove':>7} {'vs bound':>8} "
        f"{'vs FIFO':>8} {'aborted F/v':>11} {'stayed F/v':>10} {'throttled F/v':>13} "
        f"{'max pause F/v (ms)':>18} {'data F/v (GiB)':>14}"
    )
    print(header)
    for policy in ("safe", "balanced"):
        seconds, _ = bound(inventory, policy)
        for per_source in (2, 4):
            fifo, f = run(inventory, policy, per_source, fifo=True)
            ours, o = run(inventory, policy, per_source, fifo=False)
            print(
                f"{policy:<9} {per_source:>3} {seconds:>6.0f}s {fifo.makespan:>6.0f}s "
                f"{ours.makespan:>6.0f}s {ours.makespan / seconds:>7.3f}x "
                f"{fifo.makespan / ours.makespan:>7.2f}x "
                f"{fifo.aborted:>5}/{ours.aborted:<5} {len(fifo.stayed):>4}/{len(ours.stayed):<5} "
                f"{f['throttled']:>6.0f}/{o['throttled']:<6.0f} "
                f"{f['max_downtime_ms']:>8.0f}/{o['max_downtime_ms']:<9.0f} "
                f"{f['data'] / 2**30:>6.0f}/{o['data'] / 2**30:<7.0f}"
            )
    print("targets: vs bound <= 1.1x, vs FIFO >= 1.3x, no VM aborted where FIFO aborts some")


if __name__ == "__main__":
    main()
