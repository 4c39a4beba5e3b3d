"""Faults on real libvirt + QEMU: whatever fails, the record is terminal and names the host
that really runs the VM, and the guest's memory is intact."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from vmmove.backend import JobRef
from vmmove.errors import MigrationFailed, MigrationTimedOut, VMMoveError
from vmmove.machine import Phase
from vmmove.model import MiB, MigrationMode
from vmmove.policy import PRESETS

pytestmark = pytest.mark.integration

HOST_A = "vmmove-host-a"
HOST_B = "vmmove-host-b"
BUSY = {"memory_mib": 256, "wss_mib": 128, "dirty_mib_s": 32}


def qemu_pid(testbed: Any, host: int, name: str) -> int:
    """The QEMU of domain ``name`` on host ``host``, from that host's libvirt pid file."""
    pid = int(Path(testbed.hosts[host].dir, "run", "qemu", f"{name}.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "qemu" in cmdline
    assert f"guest={name}" in cmdline
    return pid


def test_the_destination_qemu_dies_mid_transfer(
    guests: Any, connect: Any, testbed: Any, fault_row: Any
) -> None:
    guests.create("vt-fault", wait_beats=2, **BUSY)
    conn = connect()
    m = conn.migrate("vt-fault", to=HOST_B, mode=MigrationMode.LIVE, bandwidth=16)
    killed = False
    for event in m.events(timeout=120):
        sent = event.progress.data_processed or 0
        if not killed and event.phase is Phase.TRANSFERRING and sent > 16 * MiB:
            os.kill(qemu_pid(testbed, 1, "vt-fault"), signal.SIGKILL)
            killed = True
    assert killed
    with pytest.raises(MigrationFailed) as info:
        m.wait(0)
    record = m.record
    assert record.phase is Phase.FAILED
    assert info.value.vm_host == record.vm_host == HOST_A
    assert guests.where("vt-fault") == [(HOST_A, True)]
    guests.assert_alive_and_intact("vt-fault")
    fault_row("destination QEMU killed", "transferring", record, "vt-fault")


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM], ids=["crash-SIGKILL", "stop-SIGTERM"]
)
def test_the_source_libvirtd_restarts_mid_transfer(
    guests: Any, connect: Any, testbed: Any, fault_row: Any, sig: int
) -> None:
    """libvirtd crashes, or is stopped, under a running migration and a new one starts: it
    cancels the migration as it reconnects to the source QEMU. The backend waits for it,
    reconnects, and records where the VM runs."""
    guests.create("vt-restart", wait_beats=2, **BUSY)
    conn = connect()
    # No policy steps: the job must still be transferring when libvirtd goes (balanced's
    # compression lets this guest converge within libvirtd's 30 s shutdown wait).
    m = conn.migrate("vt-restart", to=HOST_B, mode=MigrationMode.LIVE, bandwidth=16, policy="none")
    crashed = False
    for event in m.events(timeout=240):
        sent = event.progress.data_processed or 0
        if not crashed and event.phase is Phase.TRANSFERRING and sent > 16 * MiB:
            # SIGTERM: libvirtd waits for the migration call (up to its 30 s shutdown
            # timeout) and then goes anyway; this guest does not converge in that time.
            testbed.restart_host(0, sig=sig, down_for=1.0, stop_timeout=60)
            crashed = True
    assert crashed
    with contextlib.suppress(VMMoveError):
        m.wait(0)
    record = m.record
    assert record.phase is Phase.FAILED, (record.phase, record.error)
    assert record.vm_host == HOST_A
    assert record.error is not None
    assert "libvirtd went away" in record.error
    # While it was down, poll said so (ConnectionFailed) rather than repeat its last sample.
    assert any("lost contact" in w for w in record.warnings), record.warnings
    running = [host for host, active in guests.where("vt-restart") if active]
    assert running == [record.vm_host], (record.phase, record.error, running)
    assert conn.vm("vt-restart").host == record.vm_host
    guests.assert_alive_and_intact("vt-restart")
    how = "crashed (SIGKILL)" if sig == signal.SIGKILL else "stopped (SIGTERM)"
    fault_row(f"source libvirtd {how}, restarted", "transferring", record, "vt-restart")


CLIENT = """
import os, sys, vmmove
from vmmove.journal import Journal
from vmmove.machine import Phase
uri, journal, name, target = sys.argv[1:]
conn = vmmove.connect(uri, store=Journal(journal))
m = conn.migrate(name, to=target, mode="live", bandwidth=32, policy="balanced")
for event in m.events(timeout=120):
    if event.phase is Phase.TRANSFERRING and (event.progress.data_processed or 0) > 16 << 20:
        print(m.id, flush=True)
        os._exit(9)  # the client dies: no cleanup, its libvirt connections just drop
print("never transferred", m.record.phase, m.record.error, flush=True)
"""


def test_a_client_crash_then_attach(
    guests: Any, cluster_uri: str, testbed: Any, tmp_path: Path, fault_row: Any
) -> None:
    """The client dies mid-transfer; another process attaches from the journal and finishes
    the job: libvirt goes on with a peer-to-peer migration without its client, and the
    attached supervisor applies the policy from where the migration stands."""
    import vmmove
    from vmmove.journal import Journal

    guests.create("vt-crash", wait_beats=2, **BUSY)
    journal = tmp_path / "journal.sqlite3"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CLIENT),
            cluster_uri,
            str(journal),
            "vt-crash",
            HOST_B,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 9, (out.stdout, out.stderr)
    record_id = out.stdout.strip()

    m = vmmove.attach(record_id, uri=cluster_uri, store=Journal(journal))
    with contextlib.suppress(vmmove.VMMoveError):
        m.wait(180)  # the record says what happened; checked against reality below
    record = m.record
    assert record.phase is Phase.COMPLETED, (record.phase, record.error)
    assert record.vm_host == HOST_B
    assert record.figures.total_time is not None
    assert record.figures.total_time > 1  # libvirt's own duration of the job
    running = [host for host, active in guests.where("vt-crash") if active]
    assert running == [record.vm_host], (record.phase, record.error, running)
    guests.assert_alive_and_intact("vt-crash")
    fault_row("client killed, then attach", "transferring", record, "vt-crash")


def _transfer_until(m: Any, sent_at_least: int, timeout: float = 120) -> None:
    """Follow ``m`` until pre-copy has sent ``sent_at_least`` bytes."""
    for event in m.events(timeout=timeout):
        if (
            event.phase is Phase.TRANSFERRING
            and (event.progress.data_processed or 0) > sent_at_least
        ):
            return
    raise AssertionError(f"never transferred {sent_at_least} bytes: {m.record.phase}")


def test_the_migration_link_is_cut_mid_transfer(
    guests: Any, connect: Any, testbed: Any, fault_row: Any
) -> None:
    """The migration network goes dark mid-transfer and stays dark: pre-copy stops moving,
    the stall timeout aborts the job, QEMU drops the stream, and the VM runs on at the
    source. Once the link is back, the same VM migrates normally: nothing was left behind."""
    guests.create("vt-cut", wait_beats=2, **BUSY)
    conn = connect()
    m = conn.migrate("vt-cut", to=HOST_B, mode=MigrationMode.LIVE, bandwidth=16, stall_timeout=6)
    try:
        _transfer_until(m, 16 * MiB)
        testbed.cut_link(1)
        with pytest.raises(MigrationTimedOut) as info:
            m.wait(120)
    finally:
        testbed.heal_links()
    record = m.record
    assert record.phase is Phase.FAILED, (record.phase, record.error)
    assert "stalled" in (record.error or "")
    assert info.value.vm_host == record.vm_host == HOST_A
    assert guests.where("vt-cut") == [(HOST_A, True)]
    assert conn.vm("vt-cut").host == HOST_A
    guests.assert_alive_and_intact("vt-cut")
    fault_row("migration link cut, stays cut", "transferring", record, "vt-cut")

    again = conn.migrate("vt-cut", to=HOST_B, mode=MigrationMode.LIVE)
    again.wait(180)
    assert again.record.vm_host == HOST_B
    assert guests.where("vt-cut") == [(HOST_B, True)]
    guests.assert_alive_and_intact("vt-cut")


def test_a_link_flap_shorter_than_the_stall_timeout(
    guests: Any, connect: Any, testbed: Any, fault_row: Any
) -> None:
    """The link drops for a few seconds and comes back: TCP retransmits, pre-copy resumes,
    and the migration completes without anyone acting on it."""
    # A smaller working set than BUSY: it converges at the 16 MiB/s cap without auto-converge.
    guests.create("vt-flap", wait_beats=2, memory_mib=256, wss_mib=32, dirty_mib_s=32)
    conn = connect()
    m = conn.migrate("vt-flap", to=HOST_B, mode=MigrationMode.LIVE, bandwidth=16)
    try:
        _transfer_until(m, 16 * MiB)
        testbed.cut_link(1)
        sent = m.progress.data_processed or 0
        guests.wait_beat("vt-flap", guests.heartbeats("vt-flap").latest_seq + 3)  # ~3 s dark
        # At 16 MiB/s some 48 MiB would have gone; the socket's send buffer (tcp_wmem, at
        # most 4 MiB here) takes what QEMU writes into the dark.
        assert (m.progress.data_processed or 0) - sent < 8 * MiB, "the cut let data by"
    finally:
        testbed.heal_links()
    m.wait(240)
    record = m.record
    assert record.phase is Phase.COMPLETED, (record.phase, record.error)
    assert record.vm_host == HOST_B
    assert guests.where("vt-flap") == [(HOST_B, True)]
    guests.assert_alive_and_intact("vt-flap")
    fault_row("migration link down ~3 s, back", "transferring", record, "vt-flap")


def test_the_destination_qemu_dies_as_postcopy_starts(
    guests: Any, connect: Any, testbed: Any, lv: Any, fault_row: Any
) -> None:
    """The source switches to post-copy and the destination QEMU is killed at once: libvirt's
    migrateToURI3 never returns and the source stays paused (post-copy failed). The record is
    failed in post-copy within a few polls, says where the halves are and what to do, and does
    not claim the paused source runs the VM."""
    name = "vt-pcfail"
    guests.create(name, wait_beats=3, **BUSY)
    killed: dict[str, float] = {}
    dest_pid: list[int] = []

    def on_lifecycle(_conn: Any, _dom: Any, event: int, detail: int, _opaque: Any) -> None:
        # On libvirt's event thread, the moment the source enters post-copy.
        if (
            event == lv.VIR_DOMAIN_EVENT_SUSPENDED
            and detail == lv.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY
            and dest_pid
            and not killed
        ):
            os.kill(dest_pid[0], signal.SIGKILL)
            killed["at"] = time.monotonic()

    ((_, src),) = guests.find(name)
    callback = guests.conns[0].domainEventRegisterAny(
        src, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None
    )
    try:
        conn = connect()
        m = conn.migrate(
            name, to=HOST_B, mode=MigrationMode.LIVE, bandwidth=32, policy="minimal-downtime"
        )
        for event in m.events(timeout=120):
            if not dest_pid and event.phase is Phase.TRANSFERRING:
                dest_pid.append(qemu_pid(testbed, 1, name))
        ended = time.monotonic()
    finally:
        guests.conns[0].domainEventDeregisterAny(callback)
    record = m.record
    why = (record.phase, record.error_type, record.error, record.history)
    assert killed, why
    assert record.phase is Phase.FAILED, why
    assert record.error_type == "PostcopyFailed", why
    assert ended - killed["at"] < 5.0, why  # a few polls, not a hang
    assert record.vm_host is None, why  # the paused source is not where the VM runs
    assert "paused" in (record.error or "")
    assert f"virsh -c {testbed.uris[0]} destroy {name}" in (record.error or "")
    with pytest.raises(MigrationFailed):
        m.wait(0)
    # libvirt's own view: the source paused after the failed post-copy, the destination gone.
    ((where, dom),) = guests.find(name)
    assert where == 0
    assert dom.state()[:2] == [lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED]
    assert conn.backend.locate(dom.UUIDString()) is None
    fault_row("destination QEMU killed as post-copy starts", "postcopy", record, name)
    dom.destroy()  # what the record tells the operator to do; the blocked call returns now


def test_a_lost_answer_to_start_is_found_by_its_request_id(guests: Any, cluster_uri: str) -> None:
    """``start`` answered, but the answer never reached the engine (or the client died inside
    it): another client finds the migration by the request id the domain carries, watches it
    to the end, and still finds it once it has landed."""
    from vmmove.errors import NotFound
    from vmmove.model import MigrationSpec
    from vmmove_libvirt.backend import LibvirtBackend

    name = "vt-lost"
    guests.create(name, wait_beats=2, memory_mib=256, wss_mib=64, dirty_mib_s=0)
    first = LibvirtBackend.from_uri(cluster_uri, {})
    other = LibvirtBackend.from_uri(cluster_uri, {})
    try:
        vm = first.vm(name)
        intent = {
            "intent": "start",
            "vm": vm.id,
            "target": HOST_B,
            "mode": "live",
            "request_id": "req-lost-1",
        }
        with pytest.raises(NotFound):
            other.attach(JobRef.load(intent))  # nothing started yet
        started = first.start(
            vm,
            first.host(HOST_B),
            MigrationSpec(vm=vm.id, bandwidth=32),  # ~4 s: time to look
            MigrationMode.LIVE,
            policy=PRESETS["balanced"],
            needs=frozenset(),
            reservation=None,
            request_id="req-lost-1",
        )
        found = None
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            try:
                found = other.attach(JobRef.load(intent))
            except NotFound:  # the worker has not marked the domain yet
                time.sleep(0.1)
        assert found is not None
        assert (found.id, found.source, found.target) == (started.id, HOST_A, HOST_B)
        with pytest.raises(NotFound):
            other.attach(JobRef.load({**intent, "request_id": "req-lost-2"}))
        status = other.poll(found)
        while not status.phase.terminal:
            assert time.monotonic() < deadline + 60, status
            time.sleep(0.2)
            status = other.poll(found)
        assert (status.phase, status.vm_host) == (Phase.COMPLETED, HOST_B), status
        assert first.locate(vm.id) == HOST_B
    finally:
        first.close()
        other.close()
    third = LibvirtBackend.from_uri(cluster_uri, {})
    try:
        landed = third.attach(
            JobRef.load(intent)
        )  # after the move: the target's copy carries the id
        assert (landed.id, landed.source) == (started.id, HOST_A)
        deadline = time.monotonic() + 10
        while not third.poll(landed).phase.terminal:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert third.poll(landed).phase is Phase.COMPLETED
    finally:
        third.close()
    guests.assert_alive_and_intact(name)
