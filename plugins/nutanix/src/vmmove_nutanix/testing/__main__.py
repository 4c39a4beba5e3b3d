"""Run the fake Prism as a process: ``python -m vmmove_nutanix.testing``.

It serves until SIGINT or SIGTERM and prints how to connect (the URI, the CA file, the
user), then one JSON line with the same, so a script can wait for it::

    python -m vmmove_nutanix.testing --ca-file /tmp/prism-ca.pem &
    VMMOVE_PASSWORD=fake-prism-password vmmove --uri nutanix://admin@127.0.0.1:PORT \\
        migrate web-1 --to node-b      # with ca_file=/tmp/prism-ca.pem in the config file

The password is the fake's (``--password``), for the secret store, ``$VMMOVE_PASSWORD`` or
the config file; it is printed only on request (``--show-password``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from vmmove_nutanix.testing._tls import CA_PEM
from vmmove_nutanix.testing.app import DEFAULT_PASSWORD, DEFAULT_USER, V4_VERSIONS
from vmmove_nutanix.testing.prism import TaskTiming
from vmmove_nutanix.testing.server import FakePrism


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vmmove_nutanix.testing", description="A fake Nutanix Prism, for tests."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    p.add_argument(
        "--api",
        choices=(*V4_VERSIONS, "v2.0"),
        default="v4.0",
        help="what the server answers: Prism Central v4 (default v4.0), or v2.0 only "
        "(Prism Element without Prism Central)",
    )
    p.add_argument("--user", default=DEFAULT_USER, help="the HTTP Basic user")
    p.add_argument("--password", default=DEFAULT_PASSWORD, help="the HTTP Basic password")
    p.add_argument("--show-password", action="store_true", help="print the password too")
    p.add_argument("--ca-file", help="write the CA certificate here (default: a temp file)")
    p.add_argument("--estate", choices=("sample", "empty"), default="sample")
    p.add_argument(
        "--migrate-seconds", type=float, default=5.0, help="how long a migrate task runs"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prism = FakePrism(
        api=args.api,
        timing=TaskTiming(migrate=args.migrate_seconds),
        user=args.user,
        password=args.password,
        host=args.host,
        port=args.port,
    )
    if args.estate == "sample":
        prism.state.sample()
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with prism, tempfile.TemporaryDirectory(prefix="vmmove-prism-") as tmp:
        ca_file = Path(args.ca_file) if args.ca_file else Path(tmp, "prism-ca.pem")
        ca_file.write_text(CA_PEM, encoding="ascii")
        ready = {
            "uri": prism.uri,
            "ca_file": str(ca_file),
            "user": prism.user,
            "api": prism.api,
            "pid": os.getpid(),
        }
        secret = args.password if args.show_password else "(--password; see --show-password)"
        sys.stdout.write(
            f"fake Prism ({prism.api}) at {prism.url}\n"
            f"  vmmove --uri {prism.uri} vms     # with ca_file={ca_file} in the config file\n"
            f"  user {prism.user}; password {secret}: give it as $VMMOVE_PASSWORD\n"
            + json.dumps(ready)
            + "\n"
        )
        sys.stdout.flush()
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
