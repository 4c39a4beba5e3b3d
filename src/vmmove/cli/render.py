"""Rendering for people and scripts: the console, tables, sizes, rates and durations, JSON,
the summary of a migration record, a fleet plan and a fleet report.

rich is imported inside the functions: importing the CLI stays fast."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from vmmove.outcomes import ExitCode, outcome_of

if TYPE_CHECKING:
    from rich.console import Console

    from vmmove import MigrationRecord


def new_console(stderr: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 500  # piped: tables at their natural width, never cut
    return console


def plain(obj: Any) -> Any:
    """Dataclasses to dicts, enums to their values, anything else JSON can hold as is."""
    import dataclasses  # noqa: PLC0415

    from vmmove.secrets import Secret  # noqa: PLC0415

    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Secret):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, set | frozenset):
        return sorted(plain(v) for v in obj)
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    import json  # noqa: PLC0415

    click.echo(json.dumps(plain(obj), indent=2))


def size_text(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


def gib_text(n: int) -> str:
    return f"{n / (1 << 30):.1f}"


def vm_location(record: MigrationRecord) -> str:
    """Where the VM runs, by name (the id is in --json)."""
    return record.vm_host_name or record.vm_host or "unknown host"


def rate_text(n: float | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.0f} MiB/s"


def seconds_text(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {s % 60:02.0f} s"


def new_table(*columns: str) -> Any:
    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, column in enumerate(columns):
        # Only the last column wraps: narrow terminals keep one line per row.
        table.add_column(column, no_wrap=i < len(columns) - 1)
    return table


def summary(console: Console, record: MigrationRecord) -> None:
    if record.error_type and outcome_of(record.error_type).exit_code is ExitCode.REFUSED:
        return  # nothing moved; the error line says why
    phase = record.phase.value
    mark = {"completed": "[green]✓[/]", "cancelled": "[yellow]■[/]"}.get(phase, "[red]✗[/]")
    where = vm_location(record) if record.vm_host else "[red]unknown host[/]"
    console.print()
    console.print(f"{mark} migration {record.id} {phase}: {record.vm_name} runs on {where}")
    f = record.figures
    downtime = "-" if f.downtime_ms is None else f"{f.downtime_ms:.0f} ms"
    rows = [
        ("total time", seconds_text(f.total_time)),
        ("downtime", downtime),
        ("data sent", size_text(f.data_sent)),
        ("iterations", "-" if f.iterations is None else str(f.iterations)),
    ]
    applied = sum(s.applied for s in record.steps)
    rows.append(
        ("policy", f"{record.policy}: {applied} applied, {len(record.steps) - applied} skipped")
    )
    if record.error:
        rows.append(("error", f"[red]{record.error}[/]"))
    for label, value in rows:
        console.print(f"  {label:<11} {value}")
    for s in record.steps:
        how = "[green]applied[/]" if s.applied else "[yellow]skipped[/]"
        console.print(f"  {'':<11} {how} {s.step}" + (f" ({s.reason})" if s.reason else ""))
    listed = {s.step for s in record.steps}  # a step the platform decides is shown once
    for w in record.warnings:
        if w not in listed:
            console.print(f"  [yellow]warning[/]     {w}")


def plan_text(console: Console, plan: Any) -> None:
    """The plan as a person reads it: what moves where and why, what stays and why."""
    moves, stays = plan.moves, plan.stays
    diverging = plan.diverging
    console.print(
        f"[bold]Plan[/]: {plan.kind} {plan.scope}: {len(moves)} move{'s' * (len(moves) != 1)}, "
        f"{len(stays)} stay{'s' * (len(stays) != 1)}; {size_text(plan.data)} to send; busiest "
        f"link at least {seconds_text(plan.predicted_seconds)} (policy {plan.policy})"
    )
    if diverging:
        console.print(
            f"  [yellow]{len(diverging)} move(s) predicted not to converge by pre-copy alone[/]: "
            "they rely on the policy's auto-converge or post-copy, or fail"
        )
    if moves:
        table = new_table("#", "VM", "From", "To", "Memory", "Dirties", "Predicted", "Why")
        for i, m in enumerate(moves, 1):
            cost = m.cost
            predicted = seconds_text(cost.seconds) if cost.converges else "[red]no convergence[/]"
            table.add_row(
                str(i),
                m.vm_name,
                m.source_name or m.source,
                m.target_name or m.target,
                size_text(m.memory),
                rate_text(m.dirty_rate),
                predicted,
                f"{m.reason}; {m.placement}",
            )
        console.print(table)
    if stays:
        table = new_table("VM", "Host", "Stays because")
        for s in stays:
            table.add_row(s.vm_name, s.host, f"[yellow]{s.reason}[/]")
        console.print(table)
    if plan.frees and plan.kind != "evacuate":
        shown = ", ".join(plan.frees[:20]) + (", ..." if len(plan.frees) > 20 else "")
        console.print(f"hosts emptied ({len(plan.frees)}): {shown}")
    for key in ("hosts_used", "max_use", "stdev_use"):
        if key in plan.before and key in plan.after:
            b, a = plan.before[key], plan.after[key]
            fmt = "{:.0f}" if key == "hosts_used" else "{:.1%}"
            console.print(f"  {key.replace('_', ' '):<11} {fmt.format(b)} -> {fmt.format(a)}")
    for note in plan.notes:
        console.print(f"  [yellow]note[/] {note}")


def report_text(console: Console, report: Any) -> None:
    moved, stayed = report.moved, report.stayed
    mark = "[green]✓[/]" if report.ok else "[yellow]![/]"
    console.print()
    console.print(
        f"{mark} {report.plan.kind} {report.plan.scope}: {len(moved)} moved, "
        f"{len(stayed)} stayed, in {seconds_text(report.makespan)}"
    )
    for o in stayed:
        where = o.host or "[red]no host[/]"
        console.print(f"  [yellow]{o.status:<7}[/] {o.vm_name} on {where}: {o.reason}")
    listed = {o.vm for o in stayed}
    for s in report.left_behind:
        if s.vm not in listed:
            console.print(f"  [yellow]left on {s.host}[/] {s.vm_name}: {s.reason}")
    empty = [h for h in report.plan.frees if all(s.host != h for s in report.left_behind)]
    if report.plan.frees:
        console.print(f"  hosts now empty: {len(empty)} of {len(report.plan.frees)}")
