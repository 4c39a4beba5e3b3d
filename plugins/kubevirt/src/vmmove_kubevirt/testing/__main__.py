"""Run the fake cluster as a process: ``python -m vmmove_kubevirt.testing``.

It serves until SIGINT or SIGTERM, writes a kubeconfig if asked, and prints one JSON line
with its URL once it is ready, so a script can wait for that line::

    python -m vmmove_kubevirt.testing --kubeconfig /tmp/kc --estate sample &
    kubectl --kubeconfig /tmp/kc get vmis
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from types import FrameType

from vmmove_kubevirt.testing.controller import DEFAULT_RELEASE, RELEASES, MigrationTiming
from vmmove_kubevirt.testing.fake import DEFAULT_TOKEN, FakeKube


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vmmove_kubevirt.testing",
        description="A fake Kubernetes API server with a fake KubeVirt, for tests.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    p.add_argument("--token", default=DEFAULT_TOKEN, help="bearer token clients must send")
    p.add_argument("--no-auth", action="store_true", help="accept requests without a token")
    p.add_argument("--plain-http", action="store_true", help="serve HTTP instead of HTTPS")
    p.add_argument("--kubeconfig", help="write a kubeconfig for this server to this path")
    p.add_argument("--context", default="fake", help="context name in the kubeconfig")
    p.add_argument("--namespace", default="default", help="namespace of the estate")
    p.add_argument("--estate", choices=("sample", "empty"), default="sample", help="what to create")
    p.add_argument(
        "--phase-seconds",
        type=float,
        default=None,
        help="seconds each migration phase before Running lasts",
    )
    p.add_argument(
        "--running-seconds", type=float, default=None, help="seconds a migration is Running"
    )
    p.add_argument(
        "--release",
        choices=sorted(RELEASES),
        default=DEFAULT_RELEASE,
        help=f"the KubeVirt release line to imitate (default {DEFAULT_RELEASE})",
    )
    p.add_argument(
        "--no-added-node-selector",
        action="store_true",
        help="imitate KubeVirt before 1.6: spec.addedNodeSelector is pruned",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    timing = MigrationTiming()
    if args.phase_seconds is not None:
        for name in ("pending", "scheduling", "scheduled", "preparing_target", "target_ready"):
            setattr(timing, name, args.phase_seconds)
    if args.running_seconds is not None:
        timing.running = args.running_seconds
    kube = FakeKube(
        token=None if args.no_auth else args.token,
        tls=not args.plain_http,
        host=args.host,
        port=args.port,
        timing=timing,
        release=args.release,
        added_node_selector=False if args.no_added_node_selector else None,
        namespace=args.namespace,
    )
    if args.estate == "sample":
        kube.sample()
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with kube:
        kubeconfig = None
        if args.kubeconfig:
            kubeconfig = str(kube.kubeconfig(args.kubeconfig, context=args.context))
        ready = {"url": kube.url, "kubeconfig": kubeconfig, "pid": os.getpid()}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
