#!/usr/bin/env python3
"""End-to-end proof of the libvirt testbed, with libvirt-python directly (no vmmove code).

Starts both hosts (hosts.py), then for each scenario: define + start a TCG test guest on host A,
wait for its heartbeats, live-migrate it to host B with
``migrateToURI3(B, {VIR_MIGRATE_PARAM_URI: "tcp://<B on the link>"}, LIVE | PEER2PEER)`` while another
thread polls jobStats(), check the heartbeats continue on B with bad=0, print the figures, and
tear everything down by PID.

Scenarios:
  idle  wss 64 MiB, dirty rate 0 (pages only verified), no bandwidth cap
  busy  wss 128 MiB dirtied at 64 MiB/s, bandwidth 32 MiB/s; after the first iteration the max
        downtime is raised to 5000 ms (it would never converge under QEMU's 300 ms default)
  busy-nocap  (only on request) the same working set without a bandwidth cap

    python3 plugins/libvirt/testbed/smoke.py [--scenario idle|busy|busy-nocap|all] [--repeat N] [--json]

Exit status 0 when every scenario migrated and the guest saw no bad page.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hosts import Testbed, read_heartbeats, wait_heartbeat  # noqa: E402

try:
    import libvirt
except ImportError:  # pragma: no cover
    sys.exit(
        "libvirt-python missing: run plugins/libvirt/testbed/setup.sh (or pip install libvirt-python)"
    )

SCENARIOS = {
    "idle": dict(wss_mib=64, dirty_mib_s=0, bandwidth=None, raise_downtime_ms=None),
    "busy": dict(wss_mib=128, dirty_mib_s=64, bandwidth=32, raise_downtime_ms=5000),
    # not in "all": 128/64 without a bandwidth cap (the case where Debian's QEMU 7.2 panics the guest)
    "busy-nocap": dict(wss_mib=128, dirty_mib_s=64, bandwidth=None, raise_downtime_ms=None),
}
MIB = 1024 * 1024


class EventLoop:
    """libvirt's default event loop in a thread (needed for domain events such as JOB_COMPLETED)."""

    def __init__(self):
        libvirt.virEventRegisterDefaultImpl()  # must happen before connections are opened
        self._stop = False
        self._t = threading.Thread(target=self._run, name="libvirt-events", daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            libvirt.virEventRunDefaultImpl()

    def stop(self):
        self._stop = True  # the loop wakes up at least every keepalive interval; thread is a daemon


class JobPoller(threading.Thread):
    """Polls dom.jobStats() every `interval` s while a migration runs; optionally raises the max
    downtime once the first iteration is done, and aborts the job after `abort_after` s."""

    def __init__(self, dom, interval=0.2, raise_downtime_ms=None, abort_after=120.0):
        super().__init__(name="job-poller", daemon=True)
        self.dom, self.interval = dom, interval
        self.raise_downtime_ms, self.abort_after = raise_downtime_ms, abort_after
        self.samples: list[dict] = []
        self.last: dict = {}
        self.raised_at = None
        self.aborted = False
        self._done = threading.Event()
        self._t0 = time.monotonic()

    def run(self):
        while not self._done.wait(self.interval):
            try:
                st = self.dom.jobStats()
            except libvirt.libvirtError:
                continue
            if st.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
                continue
            st["_t"] = time.monotonic() - self._t0
            self.samples.append(st)
            self.last = st
            if (
                self.raise_downtime_ms
                and self.raised_at is None
                and st.get("memory_iteration", 0) >= 2
            ):  # dirty-sync count 2 = first pass done
                try:
                    self.dom.migrateSetMaxDowntime(self.raise_downtime_ms, 0)
                    self.raised_at = st["_t"]
                except libvirt.libvirtError as e:
                    print(f"  migrateSetMaxDowntime failed: {e}", file=sys.stderr)
            if not self.aborted and st["_t"] > self.abort_after:
                self.aborted = True
                try:
                    self.dom.abortJob()
                except libvirt.libvirtError:
                    pass

    def stop(self):
        self._done.set()
        self.join(5)


def run_scenario(
    tb: Testbed, src, dst, name: str, wss_mib: int, dirty_mib_s: int, bandwidth, raise_downtime_ms
):
    res = {
        "scenario": name,
        "wss_mib": wss_mib,
        "dirty_mib_s": dirty_mib_s,
        "bandwidth_mib_s": bandwidth,
        "max_downtime_raised_to_ms": raise_downtime_ms,
        "ok": False,
    }
    console = tb.console_path(name)
    xml = tb.domain_xml(
        name, memory_mib=256, wss_mib=wss_mib, dirty_mib_s=dirty_mib_s, console_path=console
    )
    t0 = time.monotonic()
    dom = src.defineXML(xml)
    dom.create()
    wait_heartbeat(console, 1, timeout=90)
    res["boot_to_first_heartbeat_s"] = round(time.monotonic() - t0, 2)
    hb_before = wait_heartbeat(console, 2, timeout=30)  # working set filled, dirtying at full rate

    completed: dict = {}
    done = threading.Event()

    def on_job_completed(conn, d, params, opaque):
        if d.name() == name:
            completed.update(params)
            done.set()

    cb_id = src.domainEventRegisterAny(
        dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None
    )
    # URI: without it libvirt hands QEMU the destination's hostname, which does not resolve.
    # LISTEN_ADDRESS: otherwise the destination QEMU listens on all addresses (qemu.conf's
    # migration_address refuses a loopback address).
    params = {
        libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{tb.addresses[1]}",
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: tb.addresses[1],
    }
    if bandwidth:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth  # MiB/s
    poller = JobPoller(dom, raise_downtime_ms=raise_downtime_ms)
    poller.start()
    t_mig = time.monotonic()
    try:
        dom.migrateToURI3(
            tb.uris[1], params, libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        )
        res["migrated"] = True
    except libvirt.libvirtError as e:
        res["migrated"] = False
        res["error"] = str(e)
    res["wall_s"] = round(time.monotonic() - t_mig, 2)
    poller.stop()
    done.wait(5)
    try:
        src.domainEventDeregisterAny(cb_id)
    except libvirt.libvirtError:
        pass
    stats = dict(completed)
    if not stats.get("data_processed"):
        try:
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED) or {}
        except libvirt.libvirtError:
            stats = {}
    if not stats.get("data_processed"):
        stats = poller.last  # last polled sample (e.g. after an abort)
    res.update(
        {
            "downtime_ms": stats.get("downtime"),
            "data_mib": round(stats.get("data_processed", 0) / MIB, 1),
            "iterations": stats.get("memory_iteration"),
            "libvirt_time_elapsed_ms": stats.get("time_elapsed"),
            "dirty_rate_pages_s": poller.last.get("memory_dirty_rate"),
            "remaining_mib_samples": [
                round(s.get("data_remaining", 0) / MIB) for s in poller.samples
            ][::5],
            "raised_downtime_at_s": None
            if poller.raised_at is None
            else round(poller.raised_at, 2),
            "polled_samples": len(poller.samples),
            "stats_source": "event" if completed.get("data_processed") else "jobStats/poll",
        }
    )

    if res["migrated"]:
        try:
            d2 = dst.lookupByName(name)
            res["dest_state"] = d2.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        except libvirt.libvirtError:  # on_reboot/on_crash=destroy: a guest that panicked is gone
            d2, res["dest_state"] = None, False
            res["error"] = "domain vanished on the destination (guest panicked? see console)"
        res["source_active"] = bool(dom.isActive())
        seq_at_end = read_heartbeats(console).latest_seq
        hb = read_heartbeats(console)
        if d2 is not None:
            try:
                hb = wait_heartbeat(console, seq_at_end + 3, timeout=30)
            except Exception as e:  # noqa: BLE001
                hb = read_heartbeats(console)
                res["error"] = str(e)
        res.update(
            seq_before=hb_before.latest_seq,
            seq_at_migration_end=seq_at_end,
            seq_after=hb.latest_seq,
            bad=hb.bad,
            boots=hb.boots,
            panic=hb.panic_lines[:3],
            bad_lines=hb.bad_lines[:3],
        )
        res["ok"] = (
            res["dest_state"]
            and not res["source_active"]
            and hb.ok
            and hb.latest_seq >= seq_at_end + 3
        )
        if d2 is not None and d2.isActive():
            d2.destroy()
    else:
        if dom.isActive():
            dom.destroy()
    dom.undefine()  # the source keeps the (inactive) persistent definition after a P2P migration
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--scenario", choices=[*SCENARIOS, "all"], default="all", help="all = idle + busy"
    )
    ap.add_argument("--repeat", type=int, default=1, help="run the scenario(s) N times")
    ap.add_argument("--state-dir", default=None)
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument(
        "--emulator",
        default=None,
        help="override the guest <emulator> (negative control: /usr/bin/qemu-system-x86_64, "
        "Debian's QEMU 7.2, whose TCG migration corrupts a busy guest)",
    )
    args = ap.parse_args()

    libvirt.registerErrorHandler(lambda ctx, err: None, None)  # silence libvirt's stderr printer
    loop = EventLoop()
    t_all = time.monotonic()
    t0 = time.monotonic()
    tb = Testbed.start(args.state_dir)
    if args.emulator:
        tb.emulator = args.emulator
    timings = {"testbed_start_s": round(time.monotonic() - t0, 2)}
    print(f"testbed up in {timings['testbed_start_s']}s: {tb.uris}", flush=True)
    results = []
    try:
        src, dst = libvirt.open(tb.uris[0]), libvirt.open(tb.uris[1])
        names = (["idle", "busy"] if args.scenario == "all" else [args.scenario]) * args.repeat
        for i, n in enumerate(names):
            t0 = time.monotonic()
            r = run_scenario(tb, src, dst, n if args.repeat == 1 else f"{n}-{i}", **SCENARIOS[n])
            r["cycle_s"] = round(time.monotonic() - t0, 2)
            results.append(r)
            print(
                f"[{n}] {'OK' if r['ok'] else 'FAIL'}: wall {r['wall_s']} s, downtime {r['downtime_ms']} ms, "
                f"data {r['data_mib']} MiB, iterations {r['iterations']}, boot {r['boot_to_first_heartbeat_s']} s, "
                f"heartbeats seq {r.get('seq_before')}->{r.get('seq_after')} bad={r.get('bad')}, "
                f"downtime raised at {r['raised_downtime_at_s']} s, cycle {r['cycle_s']} s"
                + (f", error: {r['error']}" if r.get("error") else "")
                + (f", console: {r['panic'][-1]}" if r.get("panic") else ""),
                flush=True,
            )
        src.close()
        dst.close()
    finally:
        t0 = time.monotonic()
        tb.stop()
        timings["testbed_stop_s"] = round(time.monotonic() - t0, 2)
        loop.stop()
    timings["total_s"] = round(time.monotonic() - t_all, 2)
    print(f"testbed stopped in {timings['testbed_stop_s']}s; total {timings['total_s']}s")
    if args.json:
        print(json.dumps({"timings": timings, "results": results}, indent=2))
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
