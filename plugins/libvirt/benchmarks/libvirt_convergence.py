"""Convergence on real libvirt hosts: libvirt's defaults, auto-converge, and vmmove's presets.

All in one run, on the testbed's two libvirt hosts (QEMU 10, TCG guests), with the link stood
for by the migration bandwidth cap (``--link``, MiB/s):

1. The *busy* guest: 256 MiB, rewriting a 128 MiB working set at the link's rate, so QEMU's
   pre-copy never converges under its defaults (300 ms downtime limit). Migrated
   - by the bare ``migrateToURI3`` call with libvirt's defaults, aborted after ``--timeout``;
   - by the bare call with ``AUTO_CONVERGE`` alone, aborted after ``--ac-timeout``;
   - through vmmove, under every preset (completion budget ``--timeout`` seconds).
   The bound is memory / link: the time to send the guest's memory once.
2. The *idle* guest: 256 MiB, 64 MiB of it written once and then only read back, migrated
   ``--rounds`` times each by the bare call and through vmmove (default policy), alternating;
   medians compared.

After every migration the guest must keep beating with its page check clean (``bad=0``).

Targets (issue #4): on the busy guest, vmmove's default policy within 1.2x the bound with at
most 300 ms downtime, its post-copy preset (minimal-downtime) within 1.0x with at most 20 ms;
on the idle guest, vmmove within 1.05x the bare call.

Run (root, after ``bash plugins/libvirt/testbed/setup.sh``; starts and stops the hosts itself)::

    python plugins/libvirt/benchmarks/libvirt_convergence.py [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import vmmove
from vmmove.errors import VMMoveError
from vmmove.model import MiB, MigrationMode
from vmmove.policy import PRESETS
from vmmove.store import MemoryStore
from vmmove_libvirt.events import ensure_loop

HERE = Path(__file__).resolve().parent
BUSY = "vb-busy"
IDLE = "vb-idle"
MEMORY_MIB = 256
WSS_MIB = 128
IDLE_WSS_MIB = 64


def load_hosts() -> Any:
    spec = importlib.util.spec_from_file_location(
        "vmmove_testbed_hosts", HERE.parent / "testbed" / "hosts.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    run: str
    outcome: str
    wall: float
    downtime_ms: float | None
    data_mib: float | None
    iterations: int | None
    pages_ok: bool
    notes: str = ""
    steps: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # "phase@seconds" from the record
    load: str = ""  # /proc/loadavg when it started: other work on the machine shows here


class Bench:
    def __init__(self, args: argparse.Namespace, hm: Any, lv: Any, tb: Any) -> None:
        self.args = args
        self.hm = hm
        self.lv = lv
        self.tb = tb
        self.conns = [lv.open(uri) for uri in tb.uris]
        self.ids = [h.hostname for h in tb.hosts]
        authorities = ",".join(uri.split("/")[2] for uri in tb.uris)
        self.cluster_uri = f"qemu+tcp://{authorities}/system"

    # ---- guests ------------------------------------------------------------------------------
    def remove(self, name: str) -> None:
        for conn in self.conns:
            try:
                dom = conn.lookupByName(name)
            except self.lv.libvirtError:
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()

    def boot(self, name: str, wss: int, dirty: int) -> None:
        self.remove(name)
        xml = self.tb.domain_xml(name, memory_mib=MEMORY_MIB, wss_mib=wss, dirty_mib_s=dirty)
        self.conns[0].defineXML(xml).create()
        self.hm.wait_heartbeat(self.tb.console_path(name), 3, timeout=120)

    def where(self, name: str) -> int:
        for i, conn in enumerate(self.conns):
            try:
                if conn.lookupByName(name).isActive():
                    return i
            except self.lv.libvirtError:
                continue
        raise RuntimeError(f"{name} runs nowhere")

    def settle(self, name: str, beats: int = 2) -> bool:
        """Wait for ``beats`` more heartbeats; True if the page check is clean."""
        console = self.tb.console_path(name)
        seq = self.hm.read_heartbeats(console).latest_seq
        try:
            hb = self.hm.wait_heartbeat(console, seq + beats, timeout=60)
        except self.hm.TestbedError:
            return False
        return bool(hb.ok)

    # ---- one migration -----------------------------------------------------------------------
    def bare(
        self, name: str, *, flags: int, timeout: float, sample: bool = True
    ) -> tuple[Row, dict[str, Any]]:
        lv = self.lv
        src = self.where(name)
        conn, dest_uri = self.conns[src], self.tb.uris[1 - src]
        dom = conn.lookupByName(name)
        params = {
            lv.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1",
            lv.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1",
            lv.VIR_MIGRATE_PARAM_BANDWIDTH: self.args.link,
        }
        flags |= (
            lv.VIR_MIGRATE_LIVE
            | lv.VIR_MIGRATE_PEER2PEER
            | lv.VIR_MIGRATE_PERSIST_DEST
            | lv.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        final: dict[str, Any] = {}
        uuid = dom.UUIDString()

        def on_completed(_c: Any, d: Any, stats: dict[str, Any], _o: Any) -> None:
            if d.UUIDString() == uuid:
                final.update(stats)

        cb = conn.domainEventRegisterAny(
            dom, lv.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_completed, None
        )
        errors: list[Exception] = []

        def call() -> None:
            try:
                dom.migrateToURI3(dest_uri, params, flags)
            except lv.libvirtError as exc:
                errors.append(exc)

        last: dict[str, Any] = {}
        aborted = False
        load = loadavg()
        worker = threading.Thread(target=call)
        t0 = time.monotonic()
        worker.start()
        while worker.is_alive():
            worker.join(0.25)
            if sample:
                try:
                    stats = dom.jobStats()
                    if stats.get("type") in (1, 2):
                        last = stats
                except lv.libvirtError:
                    pass
            if not aborted and time.monotonic() - t0 > timeout:
                aborted = True
                with contextlib.suppress(lv.libvirtError):
                    dom.abortJob()
        wall = time.monotonic() - t0
        deadline = time.monotonic() + 2
        while not final and not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        conn.domainEventDeregisterAny(cb)
        stats = final or last
        if errors:
            outcome = (
                f"aborted at {timeout:g} s: never converged" if aborted else f"failed: {errors[0]}"
            )
        else:
            outcome = "completed"
        row = Row(
            run="",
            outcome=outcome,
            wall=wall,
            downtime_ms=float(final["downtime"]) if final.get("downtime") is not None else None,
            data_mib=stats.get("data_processed", 0) / MiB if stats else None,
            iterations=stats.get("memory_iteration"),
            pages_ok=self.settle(name),
            load=load,
        )
        if last.get("auto_converge_throttle"):
            row.notes = f"guest throttled to {last['auto_converge_throttle']} %"
        return row, stats

    def vmmove(self, conn: Any, name: str, policy: str, budget_per_gib: float) -> Row:
        load = loadavg()
        dest = self.ids[1 - self.where(name)]
        t0 = time.monotonic()
        m = conn.migrate(
            name,
            to=dest,
            mode=MigrationMode.LIVE,
            policy=policy,
            bandwidth=self.args.link,
            completion_budget_per_gib=budget_per_gib,
        )
        try:
            record = m.wait()
            outcome = "completed"
        except VMMoveError as exc:
            record = m.record
            outcome = f"{record.phase}: {record.error or exc}"
        wall = time.monotonic() - t0
        f = record.figures
        return Row(
            run="",
            outcome=outcome,
            wall=wall,
            downtime_ms=f.downtime_ms,
            data_mib=f.data_sent / MiB if f.data_sent is not None else None,
            iterations=f.iterations,
            pages_ok=self.settle(name),
            notes="post-copy" if any(t.phase == "postcopy" for t in record.history) else "",
            steps=[s.step for s in record.steps if s.applied],
            history=[f"{t.phase}@{t.at - record.created_at:.2f}" for t in record.history],
            load=load,
        )

    # ---- the runs ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a, lv = self.args, self.lv
        out: dict[str, Any] = {"link_mib_s": a.link, "bound_s": MEMORY_MIB / a.link}
        with vmmove.connect(self.cluster_uri, store=MemoryStore()) as conn:
            # Idle first, alone on the machine (a busy TCG guest takes a whole core).
            log(f"idle guest: {MEMORY_MIB} MiB, {IDLE_WSS_MIB} MiB verified, no writes")
            self.boot(IDLE, IDLE_WSS_MIB, 0)
            bare_runs, vm_runs = [], []
            for i in range(a.rounds):
                row, _ = self.bare(IDLE, flags=0, timeout=300, sample=False)
                row.run = "bare migrateToURI3"
                bare_runs.append(row)
                log(f"  round {i + 1}: bare {row.wall:.2f} s", end="")
                row = self.vmmove(conn, IDLE, "balanced", 150.0)
                row.run = "vmmove (balanced)"
                vm_runs.append(row)
                log(f", vmmove {row.wall:.2f} s")
            self.remove(IDLE)
            out["idle"] = {
                "bare": [asdict(r) for r in bare_runs],
                "vmmove": [asdict(r) for r in vm_runs],
            }

            log(f"busy guest: {MEMORY_MIB} MiB, rewrites {WSS_MIB} MiB at {a.link} MiB/s")
            self.boot(BUSY, WSS_MIB, a.link)
            rows: list[Row] = []
            for label, flags, timeout in (
                ("libvirt defaults", 0, a.timeout),
                ("libvirt AUTO_CONVERGE alone", lv.VIR_MIGRATE_AUTO_CONVERGE, a.ac_timeout),
            ):
                self.settle(BUSY)
                row, _ = self.bare(BUSY, flags=flags, timeout=timeout)
                row.run = label
                rows.append(row)
                log(f"  {label}: {row.outcome}, {row.wall:.1f} s")
            budget_per_gib = a.timeout / 2  # the engine's budget: per GiB, at least 2 GiB
            for name in PRESETS:
                self.settle(BUSY)
                row = self.vmmove(conn, BUSY, name, budget_per_gib)
                row.run = f"vmmove {name}"
                rows.append(row)
                log(f"  vmmove {name}: {row.outcome}, {row.wall:.1f} s")
            self.remove(BUSY)
            out["busy"] = [asdict(r) for r in rows]
        return out


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def log(message: str, end: str = "\n") -> None:
    print(message, end=end, file=sys.stderr, flush=True)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(result: dict[str, Any]) -> bool:
    bound = result["bound_s"]
    link = result["link_mib_s"]
    print(f"\nBusy guest: {MEMORY_MIB} MiB, {WSS_MIB} MiB rewritten at {link} MiB/s;")
    print(f"link {link} MiB/s (the migration bandwidth cap);")
    print(f"bound = memory / link = {bound:.1f} s\n")
    print("| run | outcome | wall s | x bound | downtime ms | data MiB | iterations | pages |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    busy = {r["run"]: r for r in result["busy"]}
    for r in result["busy"]:
        print(
            f"| {r['run']} | {r['outcome']}{' (' + r['notes'] + ')' if r['notes'] else ''} "
            f"| {r['wall']:.2f} | {r['wall'] / bound:.2f} | {fmt(r['downtime_ms'], '.0f')} "
            f"| {fmt(r['data_mib'], '.0f')} "
            f"| {r['iterations'] if r['iterations'] is not None else '-'} "
            f"| {'ok' if r['pages_ok'] else 'BAD'} |"
        )
    idle = result["idle"]
    bare = [r["wall"] for r in idle["bare"]]
    mine = [r["wall"] for r in idle["vmmove"]]
    print(f"\nIdle guest: {MEMORY_MIB} MiB, {IDLE_WSS_MIB} MiB verified, no writes;")
    print(f"link {link} MiB/s;")
    print(f"{len(bare)} runs each, alternating\n")
    print("| run | wall s median | min | max | downtime ms median | data MiB | pages |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, rows in (
        ("bare migrateToURI3", idle["bare"]),
        ("vmmove (balanced)", idle["vmmove"]),
    ):
        walls = [r["wall"] for r in rows]
        downs = [r["downtime_ms"] for r in rows if r["downtime_ms"] is not None]
        print(
            f"| {label} | {statistics.median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} "
            f"| {fmt(statistics.median(downs) if downs else None, '.0f')} "
            f"| {fmt(statistics.median(r['data_mib'] for r in rows), '.0f')} "
            f"| {'ok' if all(r['pages_ok'] for r in rows) else 'BAD'} |"
        )

    default = busy["vmmove balanced"]
    post = busy["vmmove minimal-downtime"]
    ratio = statistics.median(mine) / statistics.median(bare)
    checks = [
        (
            f"vmmove default (balanced): {default['wall'] / bound:.2f}x bound (<= 1.2), "
            f"downtime {fmt(default['downtime_ms'], '.0f')} ms (<= 300)",
            default["outcome"] == "completed"
            and default["wall"] <= 1.2 * bound
            and (default["downtime_ms"] or 1e9) <= 300,
        ),
        (
            f"vmmove post-copy (minimal-downtime): {post['wall'] / bound:.2f}x bound (<= 1.0), "
            f"downtime {fmt(post['downtime_ms'], '.0f')} ms (<= 20)",
            post["outcome"] == "completed"
            and post["wall"] <= bound
            and (post["downtime_ms"] or 1e9) <= 20,
        ),
        (
            f"idle guest: vmmove / bare = {ratio:.3f} (<= 1.05; medians "
            f"{statistics.median(mine):.2f} / {statistics.median(bare):.2f} s)",
            ratio <= 1.05,
        ),
        (
            "libvirt's defaults never converge on the busy guest",
            busy["libvirt defaults"]["outcome"] != "completed",
        ),
        (
            "every guest kept its memory intact (page check bad=0)",
            all(r["pages_ok"] for r in result["busy"])
            and all(r["pages_ok"] for r in idle["bare"] + idle["vmmove"]),
        ),
    ]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--link", type=int, default=32, help="migration bandwidth cap, MiB/s")
    ap.add_argument("--timeout", type=float, default=40.0, help="abort the busy guest after (s)")
    ap.add_argument("--ac-timeout", type=float, default=120.0, help="same, for auto-converge")
    ap.add_argument("--rounds", type=int, default=5, help="idle migrations of each kind")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = ap.parse_args()

    hm = load_hosts()
    import libvirt  # noqa: PLC0415 (after the testbed module: it only needs the stdlib)

    ensure_loop(libvirt)
    t0 = time.monotonic()
    tb = hm.Testbed.start()
    try:
        bench = Bench(args, hm, libvirt, tb)
        result = bench.run()
    finally:
        tb.stop()
    result["total_s"] = round(time.monotonic() - t0, 1)
    ok = report(result)
    print(f"\n(benchmark took {result['total_s']:.0f} s)")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
