#!/usr/bin/env python3
"""Self-test of the guest's page checker, without a VM (about 10 s, needs gcc; run as root).

init.c also runs as an ordinary Linux process. This compiles it, starts it with a small working set
(idle, then dirtying), flips one word of its working set through /proc/<pid>/mem, and checks that
the next heartbeats report bad=1 and a "BAD page=" line. It proves that a stale or corrupt page
after a migration would be reported, not only a guest kernel panic.

    python3 plugins/libvirt/testbed/guest/selftest.py
"""

import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from hosts import parse_heartbeats  # noqa: E402

WSS_MIB = 8


def find_wss(pid: int) -> int:
    """Start address of the WSS_MIB anonymous mapping of pid."""
    size = WSS_MIB * 1024 * 1024
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) rw-p 00000000 00:00 0\s*$", line)
            if m and int(m.group(2), 16) - int(m.group(1), 16) >= size:
                return int(m.group(1), 16)
    raise RuntimeError("working-set mapping not found")


def run(binary: str, dirty: int) -> bool:
    env = {"wss_mib": str(WSS_MIB), "dirty_mib_s": str(dirty), "hb_ms": "300"}
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen([binary], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)
            out.seek(0)
            before = parse_heartbeats(out.read())
            addr = find_wss(p.pid) + 5 * 4096 + 64  # page 5, word 8
            with open(f"/proc/{p.pid}/mem", "r+b", buffering=0) as mem:
                mem.seek(addr)
                mem.write(b"\xde\xad\xbe\xef\xde\xad\xbe\xef")
            time.sleep(1.0)
            out.seek(0)
            after = parse_heartbeats(out.read())
        finally:
            p.kill()
            p.wait()
    ok = (
        before.count > 0
        and before.bad == 0
        and after.bad == 1
        and any("page=5 " in b for b in after.bad_lines)
    )
    print(
        f"dirty_mib_s={dirty}: before bad={before.bad}, after bad={after.bad}, "
        f"{after.bad_lines[:1]} -> {'OK' if ok else 'FAIL'}"
    )
    return ok


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        binary = os.path.join(d, "init")
        subprocess.run(
            ["gcc", "-static", "-O2", "-o", binary, os.path.join(HERE, "init.c")], check=True
        )
        results = [run(binary, 0), run(binary, 16)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
