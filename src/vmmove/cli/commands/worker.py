"""Commands for several workers on one PostgreSQL journal: ``worker`` (run one), ``watch``
(follow every migration of the estate live, by LISTEN/NOTIFY), and the ``--queue`` paths
of ``migrate`` and ``evacuate``."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from vmmove.cli.config import connect, journal_setting
from vmmove.cli.render import print_json

if TYPE_CHECKING:
    from vmmove import Connection


def _journal(ctx: click.Context, given: str | None) -> str:
    from vmmove.errors import InvalidInput  # noqa: PLC0415
    from vmmove.journals import is_postgres  # noqa: PLC0415

    spec = given or journal_setting(ctx)
    if not is_postgres(spec):
        raise InvalidInput(
            "workers share a PostgreSQL journal: --journal postgresql://... or VMMOVE_JOURNAL "
            "(the password from PGPASSWORD or ~/.pgpass, never the command line)"
        )
    assert spec is not None
    return spec


@click.command()
@click.option(
    "--journal",
    metavar="URI",
    help="postgresql://user@host/db [env: VMMOVE_JOURNAL; or `journal` in the config file].",
)
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Migrations this worker drives at once.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=1),
    default=15.0,
    show_default=True,
    help="Seconds a dead worker's migrations wait before another worker adopts them.",
)
@click.option("--id", "worker_id", help="This worker's name (default: host-pid-random).")
@click.option("--until-idle", is_flag=True, help="Exit once the queue is empty and nothing runs.")
@click.pass_context
def worker(
    ctx: click.Context,
    *,
    journal: str | None,
    capacity: int,
    lease: float,
    worker_id: str | None,
    until_idle: bool,
) -> None:
    """Run a worker: claim queued moves of the estate (--uri) and drive them, beside other
    workers on the same journal; adopt the migrations of workers that died. SIGTERM or
    Ctrl-C: finish what runs, claim nothing more; a second one leaves the rest to others."""
    from vmmove.cli.config import connect_options  # noqa: PLC0415
    from vmmove.worker import Worker  # noqa: PLC0415

    dsn = _journal(ctx, journal)
    uri, options = connect_options(ctx)
    w = Worker(
        uri or "sim://", dsn, capacity=capacity, lease=lease, worker_id=worker_id, options=options
    )
    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        w.stop(drain=signals["count"] == 1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(f"worker {w.id} on {w.conn.uri}, journal {w.store.shown}", err=True)
    click.echo(f"ready {w.id}", err=True)
    w.run(until_idle=until_idle)


@click.command()
@click.option("--journal", metavar="URI", help="postgresql://... [env: VMMOVE_JOURNAL].")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events.")
@click.pass_context
def watch(ctx: click.Context, journal: str | None, count: int | None) -> None:
    """Follow every migration of every worker live (one line per transition), from the
    journal's notifications: nothing polls."""
    from vmmove.journals.postgres import PgJournal  # noqa: PLC0415

    store = PgJournal(_journal(ctx, journal))
    done = threading.Event()
    seen = {"n": 0}

    def show(message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind == "rec":
            line = (
                f"{message.get('id')} {message.get('vm')} {message.get('phase')} "
                f"{message.get('owner') or '-'}"
            )
        elif kind == "cancel":
            line = f"{message.get('id')} cancel requested"
        elif kind == "queue":
            line = "queue: new moves"
        else:
            return
        click.echo(line)
        seen["n"] += 1
        if count is not None and seen["n"] >= count:
            done.set()

    listener = store.listener()
    listener.subscribers.append(show)
    click.echo(f"watching {store.shown}", err=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


def queue_move(conn: Connection, vm: str, to: str | None, kwargs: dict[str, Any]) -> None:
    item = conn.submit(vm, to, **kwargs)
    click.echo(f"queued {item}: {vm} -> {to or 'the host placement chooses'}")


def queue_plan(
    ctx: click.Context,
    make_plan: Callable[[Connection], Any],
    limits: dict[str, int | None],
    as_json: bool,
) -> None:
    from vmmove import fleet  # noqa: PLC0415
    from vmmove.worker.queue import submit_plan  # noqa: PLC0415

    with connect(ctx) as conn:
        plan = make_plan(conn)
        items = submit_plan(conn, plan, fleet.Limits(**limits))
        if as_json:
            print_json({"plan": plan.to_dict(), "queued": items})
        else:
            click.echo(json.dumps({"queued": len(items), "stays": len(plan.stays)}))
            for move, item in zip(plan.moves, items, strict=True):
                click.echo(f"queued {item}: {move.vm_name} -> {move.target_name or move.target}")
