"""Commands that read the estate: ``backends``, ``hosts``, ``vms`` and ``check`` (the
pre-checks, nothing moves)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import click

from vmmove.cli.config import connect
from vmmove.cli.options import json_option, spec_kwargs, spec_options
from vmmove.cli.render import (
    gib_text,
    new_console,
    new_table,
    plain,
    print_json,
    rate_text,
    seconds_text,
    size_text,
)
from vmmove.outcomes import ExitCode

if TYPE_CHECKING:
    from rich.console import Console

    from vmmove.prediction import Prediction


@click.command()
@json_option
def backends(as_json: bool) -> None:
    """Installed backends and what they can do."""
    from vmmove.plugins import load_plugins  # noqa: PLC0415

    plugins = load_plugins()
    specs = plugins.backends.all()
    if as_json:
        print_json(
            {
                "backends": [
                    {
                        "scheme": s.scheme,
                        "description": s.description,
                        "plugin": s.plugin,
                        "capabilities": plain(s.capabilities),
                    }
                    for s in specs
                ],
                "broken": [{"plugin": k, "error": v} for k, v in sorted(plugins.broken.items())],
            }
        )
        return
    from rich.markup import escape  # noqa: PLC0415

    from vmmove.backend import Capabilities  # noqa: PLC0415
    from vmmove.plugins import side_by_side  # noqa: PLC0415

    console = new_console()
    for s in specs:
        text = escape(s.description)  # a description may show URI syntax: [/CLUSTER]
        console.print(f"[bold]{s.scheme}://[/]  {text} [dim](plugin {escape(s.plugin)})[/]")
    columns = side_by_side(specs)
    table = new_table("Capability", *(" / ".join(schemes) for _, schemes, _ in columns))
    for field in dataclasses.fields(Capabilities):
        table.add_row(
            field.name,
            *(
                "[dim]not declared[/]"
                if caps is None
                else ("[green]yes[/]" if caps.has(field.name) else "[dim]no[/]")
                for _, _, caps in columns
            ),
        )
    console.print(table)
    for name, why in sorted(plugins.broken.items()):
        console.print(f"[red]plugin {name} failed to load:[/] {why}")


@click.command()
@json_option
@click.pass_context
def hosts(ctx: click.Context, as_json: bool) -> None:
    """Hosts of the estate, their state and room."""
    with connect(ctx) as conn:
        items = conn.hosts()
    if as_json:
        print_json(items)
        return
    table = new_table("Host", "Cluster", "State", "vCPUs", "Memory GiB", "Free GiB", "CPU", "Extra")
    for h in items:
        state = {"up": "green", "maintenance": "yellow"}.get(h.state.value, "red")
        table.add_row(
            h.name,
            h.cluster,
            f"[{state}]{h.state.value}[/]",
            f"{h.allocated.cpus}/{h.capacity.cpus}",
            f"{gib_text(h.allocated.memory)}/{gib_text(h.capacity.memory)}",
            gib_text(h.free_memory),
            h.cpu.model or h.cpu.arch,
            " ".join(f"{k}={v}" for k, v in h.extra.items()),
        )
    new_console().print(table)


@click.command()
@json_option
@click.pass_context
def vms(ctx: click.Context, as_json: bool) -> None:
    """Virtual machines, where they run, and whether they can move live."""
    with connect(ctx) as conn:
        items = conn.vms()
        names = {h.id: h.name for h in conn.hosts()} if not as_json else {}
    if as_json:
        print_json(items)
        return
    table = new_table("VM", "Host", "Power", "Memory", "vCPUs", "Storage", "Dirties", "Live")
    for v in items:
        live = "yes" if v.live_migratable else f"[yellow]no[/]: {v.not_migratable_reason or '?'}"
        table.add_row(
            v.name,
            names.get(v.host, v.host),  # the name people know; the id is in --json
            v.power.value,
            size_text(v.memory),
            str(v.vcpus),
            v.storage.value,
            rate_text(v.dirty_rate),
            live,
        )
    new_console().print(table)


@click.command()
@click.argument("vm")
@spec_options
@click.option(
    "--predict",
    "with_prediction",
    is_flag=True,
    help="also predict the live migration: time, pause, data, converges, policy steps",
)
@json_option
@click.pass_context
def check(
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
    with_prediction: bool,
    as_json: bool,
) -> None:
    """Run the pre-checks for moving VM, without moving anything. Exit 3 if refused."""
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
    prediction = None
    with connect(ctx) as conn:
        problems = conn.check(vm, to, **kwargs)
        refused = any(p.severity == "error" for p in problems)
        if with_prediction and not refused:
            prediction = conn.predict(
                vm,
                to,
                policy=policy,
                bandwidth=bandwidth,
                max_downtime=max_downtime,
                allow_postcopy=allow_postcopy,
                max_slowdown=max_slowdown,
            )
    if as_json:
        out = {"vm": vm, "target": to, "ok": not refused, "problems": problems}
        print_json({**out, "prediction": prediction} if with_prediction else out)
    else:
        console = new_console()
        where = f" to {to}" if to else ""
        if refused:
            console.print(f"[red]✗[/] {vm} cannot move{where}:")
        else:
            console.print(f"[green]✓[/] {vm} can move{where}")
        for p in problems:
            color = "red" if p.severity == "error" else "yellow"
            console.print(f"  [{color}]{p.severity:<7}[/] {p.code:<16} {p.message}")
        if prediction is not None:
            prediction_text(console, prediction)
    if refused:
        ctx.exit(ExitCode.REFUSED)


def prediction_text(console: Console, p: Prediction) -> None:
    verdict = "converges" if p.converges else "[red]does not converge[/]"
    how = " with post-copy" if p.postcopy else ""
    console.print(f"  prediction  {verdict}{how} under policy {p.policy}")
    rows = [
        ("total time", seconds_text(p.total_time)),
        ("pause", "-" if p.downtime_ms is None else f"{p.downtime_ms:.0f} ms"),
        ("data sent", size_text(p.data)),
        ("passes", str(p.passes)),
        ("link", rate_text(p.rate)),
        ("dirty rate", rate_text(p.dirty_rate)),
    ]
    for label, value in rows:
        console.print(f"  {label:<11} {value}")
    for step in p.steps:
        console.print(f"  {'':<11} fires {step}")
    for note in p.basis:
        console.print(f"  [dim]{'':<11} {note}[/]")
