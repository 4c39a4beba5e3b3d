"""``python -m vmmove.sim serve [--port N] [--speed N] [--inventory FILE]``: the simulator as
a server process (:mod:`vmmove.sim.server`). It prints its URI on the first line and serves
until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmmove.sim")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one simulated estate over HTTP")
    serve.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    serve.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    serve.add_argument("--inventory", help="inventory file (TOML); default: the sample estate")
    args = parser.parse_args(argv)
    if not args.speed > 0:
        parser.error("--speed must be positive")

    from vmmove.errors import VMMoveError  # noqa: PLC0415
    from vmmove.sim import inventory  # noqa: PLC0415
    from vmmove.sim.server import SimServer  # noqa: PLC0415

    try:
        estate = inventory.load(args.inventory) if args.inventory else None
        server = SimServer(estate, speed=args.speed, port=args.port)
    except (VMMoveError, OSError) as exc:
        print(f"vmmove sim: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return: never from its own thread.
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(server.uri, flush=True)
    server.serve_forever()
    server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
