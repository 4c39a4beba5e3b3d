"""Faults on real libvirt + QEMU: whatever fails, the record is terminal and names the host
that really runs the VM, and the guest's memory is intact."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from vmmove.errors import MigrationFailed, VMMoveError
from vmmove.machine import Phase
from vmmove.model import MiB, MigrationMode

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


def test_the_destination_qemu_dies_mid_transfer(guests: Any, connect: Any, testbed: Any) -> None:
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


def test_the_source_libvirtd_crashes_mid_transfer(guests: Any, connect: Any, testbed: Any) -> None:
    """libvirtd dies under a running migration and a new one starts: it cancels the migration
    as it reconnects to the source QEMU. The backend waits for it, reconnects, and records
    where the VM runs."""
    guests.create("vt-restart", wait_beats=2, **BUSY)
    conn = connect()
    m = conn.migrate("vt-restart", to=HOST_B, mode=MigrationMode.LIVE, bandwidth=16)
    crashed = False
    for event in m.events(timeout=240):
        sent = event.progress.data_processed or 0
        if not crashed and event.phase is Phase.TRANSFERRING and sent > 16 * MiB:
            testbed.restart_host(0, sig=signal.SIGKILL, down_for=1.0)
            crashed = True
    assert crashed
    with contextlib.suppress(VMMoveError):
        m.wait(0)
    record = m.record
    assert record.phase is Phase.FAILED, (record.phase, record.error)
    assert record.vm_host == HOST_A
    assert record.error is not None
    assert "libvirtd went away" in record.error
    running = [host for host, active in guests.where("vt-restart") if active]
    assert running == [record.vm_host], (record.phase, record.error, running)
    assert conn.vm("vt-restart").host == record.vm_host
    guests.assert_alive_and_intact("vt-restart")


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
    guests: Any, cluster_uri: str, testbed: Any, tmp_path: Path
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
