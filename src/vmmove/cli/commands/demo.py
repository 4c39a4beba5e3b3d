"""``vmmove demo``: a live migration on the built-in simulator in sped-up real time."""

from __future__ import annotations

import click

from vmmove.cli.live import follow_and_report
from vmmove.cli.options import json_option
from vmmove.cli.render import rate_text, size_text

DEMO_VM, DEMO_TARGET, DEMO_SPEED = "app-1", "edge-2", 5.0


@click.command()
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True, max=1000),
    default=DEMO_SPEED,
    show_default=True,
    help="How many times faster than real time the simulator runs.",
)
@json_option
def demo(speed: float, as_json: bool) -> None:
    """Watch a live migration on the built-in simulator, in (sped-up) real time."""
    import vmmove  # noqa: PLC0415

    with vmmove.connect(f"sim://?speed={speed:g}") as conn:
        vm, target = conn.vm(DEMO_VM), conn.host(DEMO_TARGET)
        header = (
            f"[bold]vmmove demo[/]: live-migrating {vm.name} ({size_text(vm.memory)}, the guest "
            f"writes {rate_text(vm.dirty_rate)}) from {vm.host} to {target.name} over "
            f"{target.extra.get('link_mib_s', '?')} MiB/s, simulated at {speed:g}x real time"
        )
        follow_and_report(conn.migrate(vm.id, target.id), as_json, header)
