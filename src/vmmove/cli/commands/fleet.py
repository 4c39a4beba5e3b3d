"""The fleet commands: ``evacuate``, ``rebalance`` and ``consolidate``, which plan, print
the plan and (unless ``--dry-run``) run it within the limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from vmmove.cli.config import connect
from vmmove.cli.errors import UserError
from vmmove.cli.live import FleetDisplay, GiveUp, Interrupts
from vmmove.cli.options import F, json_option
from vmmove.cli.render import new_console, plan_text, print_json, report_text
from vmmove.outcomes import ExitCode, outcome_of

if TYPE_CHECKING:
    from vmmove import Connection


def _fleet_options(func: F) -> F:
    """Shared by the fleet commands: how to plan, the limits, and whether to run at all."""
    for option in reversed(
        [
            click.option("--dry-run", is_flag=True, help="Print the plan; move nothing."),
            click.option("--policy", default="balanced", show_default=True, help="Policy name."),
            click.option(
                "--max-downtime", type=click.IntRange(min=1), metavar="MS", help="Pause cap (ms)."
            ),
            click.option(
                "--headroom",
                type=click.FloatRange(min=0, max=0.9),
                default=0.0,
                show_default=True,
                help="Share of each host's memory to keep free (0.1 = 10 %).",
            ),
            click.option(
                "--per-source",
                type=click.IntRange(min=1),
                default=2,
                show_default=True,
                help="Moves out of one host at once.",
            ),
            click.option(
                "--per-target",
                type=click.IntRange(min=1),
                default=2,
                show_default=True,
                help="Moves into one host at once.",
            ),
            click.option(
                "--per-cluster",
                type=click.IntRange(min=1),
                default=5,
                show_default=True,
                help="Moves touching one cluster at once.",
            ),
            click.option("--total", type=click.IntRange(min=1), help="Moves at once, in all."),
        ]
    ):
        func = option(func)
    return func


def _fleet_run(
    ctx: click.Context,
    make_plan: Callable[[Connection], Any],
    *,
    dry_run: bool,
    as_json: bool,
    policy: str,
    max_downtime: int | None,
    limits: dict[str, int | None],
) -> None:
    """Plan, print the plan, and unless ``dry_run`` run it with a live view; exit 0 when all
    moved, 3 when some VMs could not be placed, 4 when a move failed, 5 when interrupted."""
    from vmmove import fleet  # noqa: PLC0415

    console = new_console(stderr=as_json)
    with connect(ctx) as conn:
        plan = make_plan(conn)
        if dry_run:
            if as_json:
                print_json({"plan": plan.to_dict()})
            else:
                plan_text(console, plan)
            if plan.stays:
                ctx.exit(ExitCode.REFUSED)
            return
        plan_text(console, plan)
        interrupts = Interrupts()
        options: dict[str, Any] = {}
        if max_downtime is not None:
            options["max_downtime"] = max_downtime
        with interrupts.installed(), FleetDisplay(console, len(plan.moves)) as display:
            executor: fleet.Executor

            def observe(ev: fleet.FleetEvent) -> None:
                if interrupts.count and not executor.stopping:
                    display.line(
                        "[yellow]stopping[/]: cancelling moves in flight; Ctrl-C again gives up"
                    )
                    executor.stop(cancel_running=True)
                display.event(ev, executor.running)

            executor = fleet.Executor(
                conn,
                plan,
                fleet.Limits(**limits),
                policy=policy,
                observer=observe,
                migrate_options=options,
            )
            try:
                report = executor.run()
            except GiveUp:
                raise UserError(
                    "interrupted; moves in flight go on", ExitCode.INTERRUPTED
                ) from None
    if as_json:
        print_json({"plan": plan.to_dict(), "report": report.to_dict()})
    else:
        report_text(console, report)
    if interrupts.count:
        ctx.exit(ExitCode.CANCELLED)
    failed = [
        o
        for o in report.outcomes
        if o.status == "lost"
        or (
            o.status != "moved"
            and any(
                a.migration and outcome_of(a.error_type or "").exit_code is not ExitCode.REFUSED
                for a in o.attempts
            )
        )
    ]
    if failed:
        ctx.exit(ExitCode.FAILED)
    if not report.ok:
        ctx.exit(ExitCode.REFUSED)


def _limits(
    per_source: int, per_target: int, per_cluster: int, total: int | None
) -> dict[str, int | None]:
    return {
        "per_source": per_source,
        "per_target": per_target,
        "per_cluster": per_cluster,
        "total": total,
    }


@click.command()
@click.argument("host")
@_fleet_options
@click.option("--queue", is_flag=True, help="Queue the moves for `vmmove worker`s; return.")
@json_option
@click.pass_context
def evacuate(
    ctx: click.Context,
    *,
    host: str,
    dry_run: bool,
    policy: str,
    max_downtime: int | None,
    headroom: float,
    per_source: int,
    per_target: int,
    per_cluster: int,
    total: int | None,
    queue: bool,
    as_json: bool,
) -> None:
    """Move every VM off HOST (for maintenance), or say why one cannot move."""
    from vmmove import fleet  # noqa: PLC0415

    if queue and not dry_run:
        from vmmove.cli.commands.worker import queue_plan  # noqa: PLC0415

        queue_plan(
            ctx,
            lambda conn: fleet.evacuate(
                conn, host, headroom=headroom, policy=policy, max_downtime=max_downtime
            ),
            _limits(per_source, per_target, per_cluster, total),
            as_json,
        )
        return

    _fleet_run(
        ctx,
        lambda conn: fleet.evacuate(
            conn, host, headroom=headroom, policy=policy, max_downtime=max_downtime
        ),
        dry_run=dry_run,
        as_json=as_json,
        policy=policy,
        max_downtime=max_downtime,
        limits=_limits(per_source, per_target, per_cluster, total),
    )


@click.command()
@click.option("--cluster", help="Only this cluster (default: each cluster on its own).")
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, max=1),
    default=0.10,
    show_default=True,
    help="How far above the cluster's mean memory use a host may sit (0.1 = 10 points).",
)
@click.option("--max-moves", type=click.IntRange(min=1), help="Plan at most this many moves.")
@_fleet_options
@json_option
@click.pass_context
def rebalance(
    ctx: click.Context,
    *,
    cluster: str | None,
    threshold: float,
    max_moves: int | None,
    dry_run: bool,
    policy: str,
    max_downtime: int | None,
    headroom: float,
    per_source: int,
    per_target: int,
    per_cluster: int,
    total: int | None,
    as_json: bool,
) -> None:
    """Even out memory use across the hosts of each cluster."""
    from vmmove import fleet  # noqa: PLC0415

    _fleet_run(
        ctx,
        lambda conn: fleet.rebalance(
            conn,
            cluster,
            threshold=threshold,
            max_moves=max_moves,
            headroom=headroom,
            policy=policy,
            max_downtime=max_downtime,
        ),
        dry_run=dry_run,
        as_json=as_json,
        policy=policy,
        max_downtime=max_downtime,
        limits=_limits(per_source, per_target, per_cluster, total),
    )


@click.command()
@click.option("--cluster", help="Only this cluster (default: each cluster on its own).")
@_fleet_options
@json_option
@click.pass_context
def consolidate(
    ctx: click.Context,
    *,
    cluster: str | None,
    dry_run: bool,
    policy: str,
    max_downtime: int | None,
    headroom: float,
    per_source: int,
    per_target: int,
    per_cluster: int,
    total: int | None,
    as_json: bool,
) -> None:
    """Pack VMs onto fewer hosts and say which hosts can then be powered off."""
    from vmmove import fleet  # noqa: PLC0415

    _fleet_run(
        ctx,
        lambda conn: fleet.consolidate(
            conn, cluster, headroom=headroom, policy=policy, max_downtime=max_downtime
        ),
        dry_run=dry_run,
        as_json=as_json,
        policy=policy,
        max_downtime=max_downtime,
        limits=_limits(per_source, per_target, per_cluster, total),
    )
