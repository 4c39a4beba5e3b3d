"""``vmmove metrics serve``: the Prometheus endpoint for every migration in the journal."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from vmmove.cli.errors import UserError
from vmmove.outcomes import ExitCode


@click.group()
def metrics() -> None:
    """Prometheus metrics of migrations (needs the vmmove[metrics] extra)."""


@metrics.command()
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=9478,
    show_default=True,
    help="TCP port to listen on (0: any free port, printed at start).",
)
@click.option(
    "--addr",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 for a Prometheus on another host).",
)
def serve(port: int, addr: str) -> None:
    """Serve /metrics from the journal: the migrations of every process that writes it.

    Counts, phases in flight, durations and policy steps are computed from the records at
    each scrape; labels are backend, mode, phase, outcome, error type and step action only.
    """
    try:
        from vmmove.observe.journal_metrics import journal_registry  # noqa: PLC0415
        from vmmove.observe.metrics import serve as start  # noqa: PLC0415
    except ImportError:
        raise UserError(
            "metrics need prometheus_client: pip install 'vmmove[metrics]'", ExitCode.USAGE
        ) from None
    from vmmove.journals import open_journal  # noqa: PLC0415

    journal = open_journal()  # VMMOVE_JOURNAL: the SQLite file or a PostgreSQL database
    try:
        server = start(port, addr, registry=journal_registry(journal))
    except OSError as exc:
        raise UserError(f"cannot listen on {addr}:{port}: {exc.strerror}", ExitCode.USAGE) from None
    stop = threading.Event()

    def ask_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, ask_stop)
    # One line on stdout, flushed: scripts and tests read the port from it.
    click.echo(f"serving {server.url} from {journal!r}")
    try:
        stop.wait()
    finally:
        server.close()
        journal.close()
