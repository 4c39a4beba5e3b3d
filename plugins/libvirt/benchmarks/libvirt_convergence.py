"""Convergence on real libvirt hosts over a shaped link: libvirt's own ways against vmmove's.

The testbed's two libvirt hosts (libvirt 9.0, QEMU 10, TCG guests) run in network namespaces
joined by a link shaped to a profile (``--profile``: ``lan`` 32 MiB/s and 0.5 ms RTT, ``wan``
32 MiB/s, 10 ms RTT and 0.1 % loss, ``fat`` unshaped). The link limits every byte: pre-copy, the
stop-and-copy, post-copy page requests and libvirt's own peer connection. QEMU's bandwidth
cap is not set.

Scenarios (256 MiB guest): idle (64 MiB written once, then only read); dirtying 128 MiB at
half the link's rate, at the link's rate, at twice the link's rate. Runs in each, on the same
guest, migrated back and forth:

- libvirt defaults (``migrateToURI3``, LIVE | PEER2PEER), aborted after ``--timeout``;
- libvirt auto-converge (``AUTO_CONVERGE``), aborted after ``--ac-timeout``;
- libvirt post-copy after the first pass (``POSTCOPY``, ``migrateStartPostCopy`` once
  iteration 2 starts, as ``virsh migrate --postcopy-after-precopy``);
- vmmove under each preset of ``vmmove.policy.PRESETS`` (budget ``--timeout``), and
  ``balanced`` once more with the caller allowing post-copy (``allow_postcopy=True``).

Before each run, ``Connection.predict`` forecasts it (a fresh dirty-rate sample of the guest,
the link as measured and declared with ``link_mib_s``; libvirt's own ways written as vmmove
policies), and a last table sets each forecast against what happened: total time, downtime,
data, whether it converged.

Every row: wall time; x bound (bound = bytes that must cross / the link's goodput, both
measured in this run: the guest's non-zero memory, i.e. its working set plus what an idle
migration sends beyond its working set, over a timed TCP transfer on the link); QEMU's
downtime; the pause the guest's user feels (the longest silence of the guest's 20 ms ticks,
timestamped as they arrive: the guest's own clock stops during the stop-and-copy); the
longest stall the guest's clock saw (throttling, post-copy faults); the guest's work lost
(pages it wrote during the migration against its own pace just before); data sent;
iterations; its page check (``bad=0`` after the migration).

The idle ratio (vmmove over the bare call) is a ratio of medians: the idle rows, then ABBA
blocks of the two (bare, vmmove, vmmove, bare; ``--idle-blocks``, 1 by default).

With no arguments (CI runs it so): the ``lan`` profile, the idle guest (bare call vs vmmove)
and the dirty-at-link-rate guest under libvirt's defaults, ``balanced`` and
``minimal-downtime`` (about 3 minutes). ``--all``: every scenario and run. ``--postcopy``:
the post-copy runs at dirty = link and 2x link (and the idle guest the bound needs).
``--libvirt backports``: the hosts run the libvirt 11 setup.sh unpacked instead of the system's
9.0 (the same runs against another release of the platform).

    python plugins/libvirt/benchmarks/libvirt_convergence.py [--profile lan|wan|fat]
        [--all | --postcopy] [--libvirt system|backports]
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import vmmove
from vmmove.errors import VMMoveError
from vmmove.model import MiB, MigrationMode
from vmmove.policy import PRESETS, AtIteration, AutoConverge, Policy, PostCopy, Step, resolve
from vmmove.store import MemoryStore
from vmmove_libvirt.events import ensure_loop

HERE = Path(__file__).resolve().parent
MEMORY_MIB = 256
WSS_MIB = 128
IDLE_WSS_MIB = 64
TICK_MS = 20
NOMINAL_LINK = 32  # MiB/s: the profiles' rate; the fat link's dirty rates use it too


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
class Scenario:
    key: str
    title: str
    wss: int
    dirty: int


SCENARIOS = [
    Scenario("idle", "idle", IDLE_WSS_MIB, 0),
    Scenario("half", "dirty 1/2 link", WSS_MIB, NOMINAL_LINK // 2),
    Scenario("link", "dirty = link", WSS_MIB, NOMINAL_LINK),
    Scenario("double", "dirty 2x link", WSS_MIB, 2 * NOMINAL_LINK),
]
BARE_RUNS = ("libvirt defaults", "libvirt auto-converge", "libvirt post-copy after 1st pass")
#: A vmmove run whose caller allows post-copy (``allow_postcopy=True``): the default policy
#: then chooses post-copy over throttling once pre-copy will not converge.
ALLOWED = ", post-copy allowed"
#: The idle ratio's two sides, also run in ABBA blocks after the idle rows (``--idle-blocks``).
IDLE_PAIR = (BARE_RUNS[0], "vmmove balanced")


def allowed(label: str) -> bool | None:
    return True if label.endswith(ALLOWED) else None


@dataclass
class Row:
    run: str
    outcome: str
    wall: float
    downtime_ms: float | None
    data_mib: float | None
    iterations: int | None
    pages_ok: bool
    pause_ms: float | None = None  # longest silence of the guest's ticks (outside clock)
    stall_ms: float | None = None  # longest loop stall by the guest's clock
    work_lost_pct: float | None = None
    notes: str = ""
    steps: list[str] = field(default_factory=list)
    # vmmove.predict's forecast, made just before the run from a fresh dirty-rate sample
    predicted: dict[str, Any] = field(default_factory=dict)
    load: str = ""  # /proc/loadavg when it started: other work on the machine shows here
    # CPU time the hypervisor under this machine took during the run (/proc/stat steal): a
    # run with much of it measured a slower machine
    steal_pct: float | None = None


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
        xml = self.tb.domain_xml(
            name, memory_mib=MEMORY_MIB, wss_mib=wss, dirty_mib_s=dirty, tick_ms=TICK_MS
        )
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

    def settle(self, name: str, beats: int = 2, restarted: bool = False) -> bool:
        """Wait for ``beats`` more heartbeats; True if the page check is clean (and the guest
        booted once, unless a cold move ``restarted`` it: then its page check, no panic)."""
        console = self.tb.console_path(name)
        seq = self.hm.read_heartbeats(console).latest_seq
        if restarted:
            seq = 0  # the counter started over
        try:
            hb = self.hm.wait_heartbeat(console, seq + beats, timeout=90)
        except self.hm.TestbedError:
            return False
        if restarted:
            return bool(hb.bad == 0 and not hb.bad_lines and not hb.panic_lines)
        return bool(hb.ok)

    @contextlib.contextmanager
    def watched(self, name: str, row_out: list[Row]) -> Any:
        """Watch the guest's ticks around one migration; fill in the guest's figures."""
        watch = self.hm.ConsoleWatch(self.tb.console_path(name), TICK_MS)
        with watch:
            time.sleep(2.5)  # the guest's own pace, just before
            t0 = time.monotonic()
            yield
            t1 = time.monotonic()
            # A tick after the end closes the last silence (after a cold move: the new boot's).
            deadline = t1 + 90
            while not any(t > t1 for t, *_ in watch.samples) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
        row = row_out[0]
        pause, stall = watch.pause(t0, t1), watch.stall(t0, t1)
        row.pause_ms = None if pause is None else pause * 1000
        row.stall_ms = None if stall is None else stall * 1000
        rate, work = watch.rate(t0 - 2.5, t0), watch.work(t0, t1)
        if rate and work is not None:
            row.work_lost_pct = max(0.0, 100 * (1 - work / (rate * (t1 - t0))))

    # ---- one migration -----------------------------------------------------------------------
    def bare(self, name: str, *, kind: str, timeout: float) -> Row:
        lv = self.lv
        src = self.where(name)
        conn, dest = self.conns[src], self.tb.hosts[1 - src]
        dom = conn.lookupByName(name)
        params = {
            lv.VIR_MIGRATE_PARAM_URI: f"tcp://{dest.address}",
            lv.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: dest.address,
        }
        flags = (
            lv.VIR_MIGRATE_LIVE
            | lv.VIR_MIGRATE_PEER2PEER
            | lv.VIR_MIGRATE_PERSIST_DEST
            | lv.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        if kind == "auto-converge":
            flags |= lv.VIR_MIGRATE_AUTO_CONVERGE
        if kind == "postcopy":
            flags |= lv.VIR_MIGRATE_POSTCOPY
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
                dom.migrateToURI3(dest.uri, params, flags)
            except lv.libvirtError as exc:
                errors.append(exc)

        last: dict[str, Any] = {}
        aborted = switched = False
        load = loadavg()
        worker = threading.Thread(target=call)
        t0 = time.monotonic()
        worker.start()
        while worker.is_alive():
            worker.join(0.05 if kind == "postcopy" and not switched else 0.25)
            with contextlib.suppress(lv.libvirtError):
                stats = dom.jobStats()
                if stats.get("type") in (1, 2):
                    last = stats
            if kind == "postcopy" and not switched and last.get("memory_iteration", 0) >= 2:
                with contextlib.suppress(lv.libvirtError):
                    dom.migrateStartPostCopy()
                    switched = True
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
            outcome = "completed" + (", post-copy" if switched else "")
        row = Row(
            run="",
            outcome=outcome,
            wall=wall,
            downtime_ms=float(final["downtime"]) if final.get("downtime") is not None else None,
            data_mib=stats.get("data_processed", 0) / MiB if stats else None,
            iterations=stats.get("memory_iteration"),
            pages_ok=True,
            load=load,
        )
        if last.get("auto_converge_throttle"):
            row.notes = f"guest throttled to {last['auto_converge_throttle']} %"
        return row

    def policy(self, label: str) -> Policy:
        """The policy a run follows, as vmmove's model sees it: a preset, or libvirt's own
        way written as one (defaults: no step; auto-converge: QEMU's throttle from pass 2;
        post-copy once pass 2 starts). Its budget is the run's timeout."""
        timeout = self.args.ac_timeout if label == BARE_RUNS[1] else self.args.timeout
        if label.startswith("vmmove "):
            # The test guest ignores ACPI: a cold move powers it off after 3 s (as the tests
            # do), not after the preset's 120 s.
            preset = label.removeprefix("vmmove ").removesuffix(ALLOWED)
            chosen = replace(resolve(preset), shutdown_timeout=3.0)
        else:
            steps: tuple[Step, ...] = ()
            if label == BARE_RUNS[1]:
                steps = (Step(trigger=AtIteration(n=1), action=AutoConverge()),)
            elif label == BARE_RUNS[2]:
                steps = (Step(trigger=AtIteration(n=2), action=PostCopy()),)
            chosen = Policy(name=label, steps=steps)
        # per GiB, counted as at least 2 GiB: the whole timeout for this guest
        return replace(chosen, completion_budget_per_gib=timeout / 2)

    def predict(self, conn: Any, name: str, label: str) -> dict[str, Any]:
        dest = self.ids[1 - self.where(name)]
        t0 = time.monotonic()
        p = conn.predict(name, to=dest, policy=self.policy(label), allow_postcopy=allowed(label))
        return {
            "converges": p.converges,
            "total_s": p.total_time,
            "downtime_ms": p.downtime_ms,
            "data_mib": p.data / MiB,
            "passes": p.passes,
            "postcopy": p.postcopy,
            "steps": list(p.steps),
            "dirty_mib_s": p.dirty_rate / MiB,
            "link_mib_s": p.rate / MiB,
            "basis": list(p.basis),  # e.g. whether compression was counted, and at what cost
            "took_s": time.monotonic() - t0,  # the dirty-rate sample, mostly
        }

    def vmmove(self, conn: Any, name: str, label: str) -> Row:
        load = loadavg()
        dest = self.ids[1 - self.where(name)]
        t0 = time.monotonic()
        m = conn.migrate(
            name,
            to=dest,
            mode=MigrationMode.LIVE,
            policy=self.policy(label),
            allow_postcopy=allowed(label),
        )
        try:
            record = m.wait()
            outcome = "completed"
        except VMMoveError as exc:
            record = m.record
            outcome = f"{record.phase}: {record.error or exc}"
        wall = time.monotonic() - t0
        f = record.figures
        if any(t.phase == "postcopy" for t in record.history):
            outcome += ", post-copy"
        if record.mode is MigrationMode.COLD:
            outcome += ", fell back to cold"
        return Row(
            run="",
            outcome=outcome,
            wall=wall,
            downtime_ms=f.downtime_ms,
            data_mib=f.data_sent / MiB if f.data_sent is not None else None,
            iterations=f.iterations,
            pages_ok=True,
            steps=[s.step for s in record.steps if s.applied],
            load=load,
        )

    def one(self, conn: Any, name: str, label: str) -> Row:
        a = self.args
        self.settle(name)
        predicted = self.predict(conn, name, label)
        holder: list[Row] = []
        before = cpu_times()
        with self.watched(name, holder):
            kinds = {BARE_RUNS[0]: "defaults", BARE_RUNS[1]: "auto-converge"}
            kinds[BARE_RUNS[2]] = "postcopy"
            if label in kinds:
                timeout = a.ac_timeout if kinds[label] == "auto-converge" else a.timeout
                holder.append(self.bare(name, kind=kinds[label], timeout=timeout))
            else:
                holder.append(self.vmmove(conn, name, label))
        row = holder[0]
        row.run = label
        row.predicted = predicted
        row.steal_pct = steal_pct(before, cpu_times())
        row.pages_ok = self.settle(name, restarted="cold" in row.outcome)
        if "cold" in row.outcome:
            row.work_lost_pct = None  # it restarted: its page counter started over
        log(
            f"  {label}: {row.outcome}, {row.wall:.1f} s, pause {fmt(row.pause_ms, '.0f')} ms, "
            f"downtime {fmt(row.downtime_ms, '.0f')} ms, work lost {fmt(row.work_lost_pct)} %, "
            f"steal {fmt(row.steal_pct)} %"
        )
        return row

    def idle_walls(self, conn: Any, name: str, rows: list[Row]) -> dict[str, list[float]]:
        """The idle guest's walls for the bare call and vmmove: the rows', then two more of
        each per ABBA block (bare, vmmove, vmmove, bare; ``--idle-blocks``). A one-run ratio
        was at the mercy of one draw of the link (wan's loss) and of a drift through the run;
        ABBA gives both sides both directions of the move and both halves of the block."""
        walls: dict[str, list[float]] = {label: [] for label in IDLE_PAIR}
        bare, ours = IDLE_PAIR
        order = (bare, ours, ours, bare) * self.args.idle_blocks
        extra = [self.one(conn, name, label) for label in order]
        for row in [*rows, *extra]:
            if row.run in walls and row.outcome == "completed" and row.pages_ok:
                walls[row.run].append(row.wall)
        return walls

    # ---- the runs ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        link = self.tb.measure_link(mib=32)
        goodput = (link["up_mib_s"] + link["down_mib_s"]) / 2
        log(
            f"link {self.tb.profile.describe()}: goodput {link['up_mib_s']:.1f} / "
            f"{link['down_mib_s']:.1f} MiB/s, RTT {link['rtt_ms']:.2f} ms"
        )
        version = self.conns[0].getLibVersion()
        out: dict[str, Any] = {
            "libvirt": f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}",
            "profile": self.tb.profile.describe(),
            "link": link,
            "goodput_mib_s": goodput,
            "scenarios": {},
        }
        presets = list(PRESETS)
        if a.postcopy:
            pc = [BARE_RUNS[2], "vmmove minimal-downtime", f"vmmove balanced{ALLOWED}"]
            plan = {"idle": [BARE_RUNS[0], "vmmove balanced"], "link": pc, "double": pc}
        elif a.all:
            vm_runs = [f"vmmove {p}" for p in presets]
            vm_runs.insert(presets.index("balanced") + 1, f"vmmove balanced{ALLOWED}")
            plan = {s.key: [*BARE_RUNS, *vm_runs] for s in SCENARIOS}
        else:
            plan = {
                "idle": [BARE_RUNS[0], "vmmove balanced"],
                "link": [BARE_RUNS[0], "vmmove balanced", "vmmove minimal-downtime"],
            }
        # The link as measured, declared to vmmove (libvirt does not report one).
        with vmmove.connect(self.cluster_uri, store=MemoryStore(), link_mib_s=goodput) as conn:
            for sc in SCENARIOS:
                if sc.key not in plan:
                    continue
                name = f"vb-{sc.key}"
                log(f"{sc.title}: {MEMORY_MIB} MiB, {sc.wss} MiB at {sc.dirty} MiB/s")
                self.boot(name, sc.wss, sc.dirty)
                rows = [self.one(conn, name, label) for label in plan[sc.key]]
                if sc.key == "idle":
                    out["idle_walls"] = self.idle_walls(conn, name, rows)
                self.remove(name)
                out["scenarios"][sc.key] = {
                    "title": sc.title,
                    "wss_mib": sc.wss,
                    "dirty_mib_s": sc.dirty,
                    "rows": [asdict(r) for r in rows],
                }
        # Bytes that must cross: the non-zero memory. An idle migration sends its working
        # set plus the kernel's and boot's leftovers; the others, their working set plus those.
        idle = out["scenarios"]["idle"]["rows"]
        base = min(r["data_mib"] for r in idle if r["data_mib"]) - IDLE_WSS_MIB
        out["base_mib"] = base
        for s in out["scenarios"].values():
            s["must_cross_mib"] = s["wss_mib"] + base
            s["bound_s"] = s["must_cross_mib"] / goodput
        return out


def cpu_times() -> list[int]:
    """The machine's CPU time so far, by kind (/proc/stat's first line), in ticks."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return []


def steal_pct(before: list[int], after: list[int]) -> float | None:
    """The share of CPU time between two readings that the hypervisor took (steal, the
    eighth field), where the kernel counts it."""
    if len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])  # guest time is counted in user already
    return 100 * (after[7] - before[7]) / total if total > 0 else None


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
    link = result["link"]
    print(f"\nlibvirt {result.get('libvirt', '?')}. Link {result['profile']}; ", end="")
    print(f"measured goodput {link['up_mib_s']:.1f} / ")
    print(f"{link['down_mib_s']:.1f} MiB/s, RTT {link['rtt_ms']:.2f} ms. Guest {MEMORY_MIB} MiB;")
    print(f"non-zero memory = working set + {result['base_mib']:.0f} MiB (measured).")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, s in result["scenarios"].items():
        bound = s["bound_s"]
        print(f"\n### {s['title']}: {s['wss_mib']} MiB at {s['dirty_mib_s']} MiB/s; ", end="")
        print(f"bound {s['must_cross_mib']:.0f} MiB / link = {bound:.2f} s\n")
        print(
            "| run | outcome | wall s | x bound | QEMU downtime ms | guest pause ms "
            "| guest stall ms | work lost % | data MiB | iterations | pages | steal % |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in s["rows"]:
            rows[(key, r["run"])] = r
            r["x_bound"] = r["wall"] / bound
            print(
                f"| {r['run']} | {r['outcome']}{' (' + r['notes'] + ')' if r['notes'] else ''} "
                f"| {r['wall']:.2f} | {r['x_bound']:.2f} | {fmt(r['downtime_ms'], '.0f')} "
                f"| {fmt(r['pause_ms'], '.0f')} | {fmt(r['stall_ms'], '.0f')} "
                f"| {fmt(r['work_lost_pct'])} | {fmt(r['data_mib'], '.0f')} "
                f"| {r['iterations'] if r['iterations'] is not None else '-'} "
                f"| {'ok' if r['pages_ok'] else 'BAD'} | {fmt(r.get('steal_pct'))} |"
            )

    def get(key: str, run: str) -> dict[str, Any] | None:
        return rows.get((key, run))

    checks: list[tuple[str, bool | None]] = []
    d = get("link", "vmmove balanced")
    ac = get("link", BARE_RUNS[1])
    if d is not None:
        lost_ok: bool | None = None
        if ac is not None and d["work_lost_pct"] is not None and ac["work_lost_pct"] is not None:
            # A migration that did not complete cost the guest nothing, and moved nothing.
            lost_ok = d["outcome"] == "completed" and d["work_lost_pct"] <= ac["work_lost_pct"]
        checks.append(
            (
                f"dirty = link, default policy (balanced, no post-copy): {d['x_bound']:.2f}x "
                f"bound (<= 1.5), guest pause {fmt(d['pause_ms'], '.0f')} ms (<= 300)",
                d["outcome"] == "completed"
                and d["x_bound"] <= 1.5
                and (d["pause_ms"] if d["pause_ms"] is not None else 1e9) <= 300,
            )
        )
        checks.append(
            (
                f"dirty = link, default policy's work lost {fmt(d['work_lost_pct'])} % <= "
                f"auto-converge's {fmt(ac['work_lost_pct'] if ac else None)} % "
                f"({d['outcome']})",
                lost_ok,
            )
        )
    p = get("link", "vmmove minimal-downtime")
    if p is not None:
        checks.append(
            (
                f"dirty = link, post-copy preset (minimal-downtime): {p['x_bound']:.2f}x bound "
                f"(<= 1.1), guest pause {fmt(p['pause_ms'], '.0f')} ms (<= 50)",
                p["outcome"].startswith("completed")
                and p["x_bound"] <= 1.1
                and (p["pause_ms"] if p["pause_ms"] is not None else 1e9) <= 50,
            )
        )
    walls = result.get("idle_walls", {})
    b, v = (walls.get(label) for label in IDLE_PAIR)
    if b and v:
        ratio = statistics.median(v) / statistics.median(b)
        checks.append(
            (
                f"idle guest: vmmove / bare migrateToURI3 = {ratio:.3f} (<= 1.05; medians "
                f"{statistics.median(v):.2f} / {statistics.median(b):.2f} s of "
                f"{len(v)} / {len(b)} runs: {', '.join(f'{w:.2f}' for w in v)} / "
                f"{', '.join(f'{w:.2f}' for w in b)})",
                ratio <= 1.05,
            )
        )
    checks.append(
        (
            "every guest kept its memory intact (page check bad=0)",
            all(r["pages_ok"] for r in rows.values()),
        )
    )
    checks.extend(predictions(result))
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {text}")
    return all(ok is not False for _, ok in checks)


def ended_live(row: dict[str, Any]) -> bool:
    return bool(row["outcome"].startswith("completed") and "cold" not in row["outcome"])


def predictions(result: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """The predicted-vs-measured table, and the predictor's three targets over every row."""
    print("\n### Predicted (vmmove.predict, before each run) vs measured\n")
    print(
        "| scenario | run | dirty sampled MiB/s | converges: predicted / measured "
        "| time s: predicted / wall | ratio | downtime ms: predicted / QEMU | ratio "
        "| MiB: predicted / sent | steps predicted |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    times: list[float] = []
    pauses: list[float] = []
    calls = right = 0
    for s in result["scenarios"].values():
        for r in s["rows"]:
            p = r["predicted"]
            if not p:
                continue
            live = ended_live(r)
            calls += 1
            right += p["converges"] == live
            t_ratio = d_ratio = None
            if p["converges"] and live and p["total_s"]:
                t_ratio = r["wall"] / p["total_s"]
                times.append(t_ratio)
            if p["converges"] and live and p["downtime_ms"] and r["downtime_ms"] is not None:
                d_ratio = r["downtime_ms"] / p["downtime_ms"]
                pauses.append(d_ratio)
            yes_no = {True: "yes", False: "no"}
            print(
                f"| {s['title']} | {r['run']} | {p['dirty_mib_s']:.1f} "
                f"| {yes_no[p['converges']]} / {yes_no[live]} "
                f"| {fmt(p['total_s'])} / {r['wall']:.1f} | {fmt(t_ratio, '.2f')} "
                f"| {fmt(p['downtime_ms'], '.0f')} / {fmt(r['downtime_ms'], '.0f')} "
                f"| {fmt(d_ratio, '.2f')} | {p['data_mib']:.0f} / {fmt(r['data_mib'], '.0f')} "
                f"| {'; '.join(p['steps']) or '-'} |"
            )
    if not calls:
        return [("predictor: no prediction made", None)]
    within_t = sum(abs(x - 1) <= 0.10 for x in times)
    within_d = sum(abs(x - 1) <= 0.25 for x in pauses)
    return [
        (
            f"predictor, total time within 10 %: {within_t} of {len(times)} runs that "
            f"converged as predicted (wall / predicted {fmt(min(times, default=None), '.2f')}"
            f"..{fmt(max(times, default=None), '.2f')})",
            bool(times) and within_t == len(times),
        ),
        (
            f"predictor, downtime within 25 %: {within_d} of {len(pauses)} "
            f"(QEMU / predicted {fmt(min(pauses, default=None), '.2f')}"
            f"..{fmt(max(pauses, default=None), '.2f')})",
            bool(pauses) and within_d == len(pauses),
        ),
        (f"predictor, converges or not: right {right} of {calls}", right == calls),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="lan", help="the testbed's link: lan, wan or fat")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every scenario and every run")
    which.add_argument(
        "--postcopy", action="store_true", help="the post-copy runs at dirty = link and 2x link"
    )
    ap.add_argument(
        "--libvirt",
        default=None,
        choices=("system", "backports"),
        help="the hosts' libvirt: the system's (9.0) or setup.sh's backports (11)",
    )
    ap.add_argument("--timeout", type=float, default=40.0, help="abort a migration after (s)")
    ap.add_argument(
        "--idle-blocks",
        type=int,
        default=1,
        metavar="N",
        help="ABBA blocks of bare and vmmove runs on the idle guest, for the idle ratio",
    )
    ap.add_argument("--ac-timeout", type=float, default=90.0, help="same, for auto-converge")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = ap.parse_args()

    hm = load_hosts()
    import libvirt  # noqa: PLC0415 (after the testbed module: it only needs the stdlib)

    ensure_loop(libvirt)
    t0 = time.monotonic()
    tb = hm.Testbed.start(profile=args.profile, libvirt=args.libvirt)
    try:
        bench = Bench(args, hm, libvirt, tb)
        result = bench.run()
    finally:
        tb.stop()
    result["total_s"] = round(time.monotonic() - t0, 1)
    ok = report(result)
    print(f"\n(benchmark took {result['total_s']:.0f} s, load {loadavg()})")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
