"""Options shared by several commands: ``--json`` and how to move a VM (``check`` and
``migrate`` judge the same request)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def spec_options(func: F) -> F:
    """How to move: shared by ``check`` and ``migrate`` so both judge the same request."""
    for option in reversed(
        [
            click.option(
                "--to", "to", metavar="HOST", help="Target host (default: placement chooses)."
            ),
            click.option("--live", is_flag=True, help="Migrate live (the VM must be running)."),
            click.option("--cold", is_flag=True, help="Stop, move, start."),
            click.option("--auto", is_flag=True, help="Live if running, else cold (default)."),
            click.option("--policy", default="balanced", show_default=True, help="Policy name."),
            click.option(
                "--max-downtime", type=click.IntRange(min=1), metavar="MS", help="Pause cap (ms)."
            ),
            click.option(
                "--bandwidth", type=click.IntRange(min=1), metavar="MIB", help="Rate cap (MiB/s)."
            ),
            click.option(
                "--allow-postcopy/--no-postcopy",
                "allow_postcopy",
                default=None,
                help="Let the policy switch to post-copy rather than throttle the guest, or "
                "forbid post-copy (default: the policy's own steps).",
            ),
            click.option(
                "--max-slowdown",
                type=click.IntRange(min=1, max=99),
                metavar="PERCENT",
                help="Throttle the guest's vCPUs no further than this while converging; "
                "past it the live attempt ends (cold, where the policy falls back).",
            ),
        ]
    ):
        func = option(func)
    return func


def spec_kwargs(
    *,
    live: bool,
    cold: bool,
    auto: bool,
    policy: str,
    max_downtime: int | None,
    bandwidth: int | None,
    allow_postcopy: bool | None = None,
    max_slowdown: int | None = None,
) -> dict[str, Any]:
    if live + cold + auto > 1:
        raise click.UsageError("--live, --cold and --auto exclude each other")
    mode = "live" if live else "cold" if cold else "auto"
    return {
        "mode": mode,
        "policy": policy,
        "max_downtime": max_downtime,
        "bandwidth": bandwidth,
        "allow_postcopy": allow_postcopy,
        "max_slowdown": max_slowdown,
    }
