"""Run the fake Hyper-V estate as a process: ``python -m vmmove_hyperv.testing``.

It serves until SIGINT or SIGTERM and prints how to connect, then one JSON line with the
URI, so a script can wait for that line::

    python -m vmmove_hyperv.testing --shape 7 &
    VMMOVE_PASSWORD=fake-hyperv-password vmmove --uri 'hyperv://Administrator@...' hosts
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from types import FrameType

from vmmove_hyperv.testing.emulation import SHAPES
from vmmove_hyperv.testing.fabric import Fabric
from vmmove_hyperv.testing.fake import DEFAULT_PASSWORD, DEFAULT_USER, FakeHyperV


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vmmove_hyperv.testing",
        description="Fake Hyper-V hosts behind a fake WinRM endpoint, for tests.",
    )
    p.add_argument("--user", default=DEFAULT_USER, help="the account clients log in as")
    p.add_argument("--password", default=DEFAULT_PASSWORD, help="its password")
    p.add_argument("--shape", choices=sorted(SHAPES), default="5.1", help="PowerShell release")
    p.add_argument("--port", type=int, default=0, help="port shared by every host (default: any)")
    p.add_argument("--tls", action="store_true", help="serve HTTPS (prints the CA file)")
    p.add_argument(
        "--migrate-seconds", type=float, default=None, help="seconds every live migration takes"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fabric = Fabric().sample()
    if args.migrate_seconds is not None:
        for vm in fabric:
            vm.migrate_seconds = args.migrate_seconds
    fake = FakeHyperV(
        fabric, shape=args.shape, user=args.user, password=args.password, tls=args.tls
    )
    if args.port:
        fake.server = type(fake.server)(
            fake.shell,
            users={args.user: args.password},
            tls=args.tls,
            port=args.port,
        )
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with fake:
        tls = f"?https=true&ca_trust_path={fake.server.ca_file}" if args.tls else ""
        uri = fake.uri + tls
        sys.stderr.write(
            f"fake Hyper-V ({args.shape}) on {', '.join(fake.server.hosts.values())}\n"
            f"  hosts: {', '.join(sorted(fabric.hosts))}; VMs: "
            f"{', '.join(sorted(v.name for v in fabric))}\n"
            f"  connect: VMMOVE_PASSWORD='{args.password}' vmmove --uri '{uri}' hosts\n"
            f"  migrate: VMMOVE_PASSWORD=... vmmove --uri '{uri}' migrate web-1 --to hv2\n"
        )
        ready = {"uri": uri, "user": args.user, "pid": os.getpid(), "ca": fake.server.ca_file}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
