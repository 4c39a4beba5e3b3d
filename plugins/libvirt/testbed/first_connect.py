"""How long the first connection to a freshly started libvirtd takes, and where the time goes.

Starts two libvirt hosts of the testbed with an empty QEMU capability cache (a state directory
of their own, ports 16640/16641, no warm-up), then times, against each fresh daemon:

* ``connect``: ``vmmove_libvirt``'s connect (open, host name, versions, event callbacks),
* ``capabilities``: the first ``virConnectGetCapabilities`` (what connect used to call), and a
  second one,
* ``hosts()``: the first inventory of hosts, which now reads the capabilities.

    python plugins/libvirt/testbed/first_connect.py [--json]

The hosts are stopped at the end (by PID), and their state directory removed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTBED = Path(__file__).resolve().parent / "hosts.py"
PORTS = (16640, 16641)


def _testbed() -> Any:
    spec = importlib.util.spec_from_file_location("vmmove_libvirt_testbed_hosts", TESTBED)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(uri: str, lv: Any) -> dict[str, float]:
    from vmmove_libvirt.backend import LibvirtBackend

    t0 = time.monotonic()
    backend = LibvirtBackend.from_uri(uri, {})
    connect = time.monotonic() - t0
    try:
        (host,) = backend._hosts.values()
        t0 = time.monotonic()
        host.conn.getCapabilities()
        caps1 = time.monotonic() - t0
        t0 = time.monotonic()
        host.conn.getCapabilities()
        caps2 = time.monotonic() - t0
    finally:
        backend.close()
    # A new client on the same (now probed) daemon: what hosts() costs it.
    backend = LibvirtBackend.from_uri(uri, {})
    try:
        t0 = time.monotonic()
        backend.hosts()
        hosts = time.monotonic() - t0
    finally:
        backend.close()
    return {
        "connect_s": round(connect, 3),
        "capabilities_first_s": round(caps1, 3),
        "capabilities_again_s": round(caps2, 3),
        "hosts_first_s_on_a_probed_daemon": round(hosts, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import libvirt

    from vmmove_libvirt.events import ensure_loop

    ensure_loop(libvirt)
    hosts_mod = _testbed()
    state = Path(tempfile.mkdtemp(prefix="vmmove-first-connect-"))
    try:
        t0 = time.monotonic()
        tb = hosts_mod.Testbed.start(state_dir=state, ports=PORTS, warm=False)
        started = time.monotonic() - t0
        try:
            rows = {h.hostname: measure(h.uri, libvirt) for h in tb.hosts}
        finally:
            tb.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    out = {"daemons_started_s": round(started, 2), "hosts": rows}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"two fresh libvirtd started in {started:.2f} s (no capability cache, no warm-up)")
        for name, row in rows.items():
            print(
                f"{name}: connect {row['connect_s']:.3f} s; first getCapabilities "
                f"{row['capabilities_first_s']:.3f} s, again {row['capabilities_again_s']:.3f} s;"
                f" hosts() of a new client {row['hosts_first_s_on_a_probed_daemon']:.3f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
