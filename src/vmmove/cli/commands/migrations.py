"""Commands on one migration and the journal: ``migrate``, ``cancel``, ``history``,
``show`` and ``attach``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import click

from vmmove.cli.config import Settings, connect, journal_setting
from vmmove.cli.errors import UserError
from vmmove.cli.live import follow_and_report
from vmmove.cli.options import json_option, spec_kwargs, spec_options
from vmmove.cli.render import new_console, new_table, print_json, summary, vm_location
from vmmove.outcomes import ExitCode


@click.command()
@click.argument("vm")
@spec_options
@click.option("--queue", is_flag=True, help="Queue it for the workers of a PostgreSQL journal.")
@json_option
@click.pass_context
def migrate(
    ctx: click.Context,
    *,
    vm: str,
    to: str | None,
    live: bool,
    cold: bool,
    auto: bool,
    policy: str,
    max_downtime: int | None,
    bandwidth: int | None,
    allow_postcopy: bool | None,
    max_slowdown: int | None,
    queue: bool,
    as_json: bool,
) -> None:
    """Move VM to another host and watch it. Ctrl-C cancels (before the commit point).
    With --queue: put it in the journal's queue for `vmmove worker` and return."""
    kwargs = spec_kwargs(
        live=live,
        cold=cold,
        auto=auto,
        policy=policy,
        max_downtime=max_downtime,
        bandwidth=bandwidth,
        allow_postcopy=allow_postcopy,
        max_slowdown=max_slowdown,
    )
    with connect(ctx) as conn:
        if queue:
            from vmmove.cli.commands.worker import queue_move  # noqa: PLC0415

            queue_move(conn, vm, to, kwargs)
            return
        migration = conn.migrate(vm, to, **kwargs)
        rec = migration.record
        header = (
            f"Migration [bold]{rec.id}[/]: {rec.vm_name} from {rec.source_name or rec.source} "
            f"to {rec.target_name or rec.target or 'the host placement chooses'} (Ctrl-C cancels)"
        )
        follow_and_report(migration, as_json, header)


@click.command()
@click.argument("migration_id", metavar="ID")
@click.pass_context
def cancel(ctx: click.Context, migration_id: str) -> None:
    """Ask migration ID to cancel, wherever it is supervised. Exit 3 if it is past its
    commit point or over."""
    from vmmove.errors import NotFound  # noqa: PLC0415
    from vmmove.journals import open_journal  # noqa: PLC0415

    journal = open_journal(journal_setting(ctx))
    try:
        record = journal.get(migration_id)
    except NotFound:
        if not hasattr(journal, "channel"):
            raise
        from vmmove.worker.queue import cancel_item  # noqa: PLC0415

        # Not a record: a queued move, cancelled here if no worker claimed it yet.
        click.echo(f"queued move {migration_id}: {cancel_item(journal, migration_id)}")  # type: ignore[arg-type]
        return
    if not record.phase.cancellable:
        raise UserError(
            f"migration {record.id} cannot be cancelled now ({record.phase.value}; "
            f"VM on {vm_location(record)})",
            ExitCode.REFUSED,
        )
    # The process that supervises it reads the request on its next loop.
    journal.request_cancel(record.id)
    click.echo(
        f"cancel requested for migration {record.id} ({record.vm_name}, {record.phase.value}); "
        f"follow it with: vmmove show {record.id}"
    )


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@json_option
@click.pass_context
def history(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Recent migrations from the journal, newest first."""
    from vmmove.journals import open_journal  # noqa: PLC0415

    records = open_journal(journal_setting(ctx)).list(limit=limit)
    if as_json:
        print_json(records)
        return
    table = new_table("ID", "VM", "FROM", "TO", "PHASE", "VM ON", "WHEN")
    for r in records:
        when = datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            r.id,
            r.vm_name,
            r.source_name or r.source,
            r.target_name or r.target or "-",
            r.phase.value,
            vm_location(r) if r.vm_host else "?",
            when,
        )
    new_console().print(table)


@click.command()
@click.argument("migration_id", metavar="ID")
@click.option(
    "--refresh",
    is_flag=True,
    help="For an ended record whose VM location is unknown, ask the platform now.",
)
@json_option
@click.pass_context
def show(ctx: click.Context, migration_id: str, refresh: bool, as_json: bool) -> None:
    """One migration's record: phases with times, policy steps, figures, where the VM is."""
    from vmmove.journals import open_journal  # noqa: PLC0415

    journal = open_journal(journal_setting(ctx))
    record = journal.get(migration_id)
    if refresh and record.phase.terminal and record.located_at is None:
        settings: Settings = ctx.find_object(Settings) or Settings(None, False, None, False)
        if settings.uri is None:
            ctx.obj = replace(settings, uri=journal.estate_of(migration_id))
        with connect(ctx) as conn:
            record = conn.attach(migration_id).record
    if as_json:
        print_json(record)
        return
    console = new_console()
    console.print(f"Migration [bold]{record.id}[/]: {record.vm_name} ({record.backend})")
    start = record.history[0].at if record.history else record.created_at
    for t in record.history:
        note = f"  {t.note}" if t.note else ""
        console.print(f"  {t.at - start:8.1f}s {t.phase.value}{note}")
    summary(console, record)


@click.command()
@click.argument("migration_id", metavar="ID")
@json_option
@click.pass_context
def attach(ctx: click.Context, migration_id: str, as_json: bool) -> None:
    """Supervise migration ID again after the process that started it died."""
    from vmmove.journals import open_journal  # noqa: PLC0415

    journal = open_journal(journal_setting(ctx))
    settings: Settings = ctx.find_object(Settings) or Settings(None, False, None, False)
    if settings.uri is None:
        # Reconnect to the estate the record was written for (credentials from env/config).
        ctx.obj = replace(settings, uri=journal.estate_of(migration_id))
    with connect(ctx) as conn:
        migration = conn.attach(migration_id)
        rec = migration.record
        header = f"Attached to migration [bold]{rec.id}[/]: {rec.vm_name}, {rec.phase.value}"
        follow_and_report(migration, as_json, header)
