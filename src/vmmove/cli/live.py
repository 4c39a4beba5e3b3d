"""Following work while it runs: Ctrl-C handling (the first cancels, the second gives up),
the live display of one migration and of a fleet run, and :func:`follow_and_report`."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from vmmove.cli.errors import UserError
from vmmove.cli.render import new_console, print_json, rate_text, seconds_text, summary, vm_location
from vmmove.outcomes import ExitCode

if TYPE_CHECKING:
    from types import FrameType

    from rich.console import Console
    from rich.progress import Progress, TaskID

    from vmmove import Migration, MigrationEvent, MigrationRecord


class GiveUp(BaseException):
    """Raised by the second Ctrl-C: stop watching now, whatever the engine is doing."""


class Interrupts:
    """Counts Ctrl-C while a migration runs. The first only sets a flag (the follow loop
    asks for the cancel between events, outside any engine lock); the second gives up."""

    def __init__(self) -> None:
        self.count = 0

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            raise GiveUp

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only; nothing to install
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class Display:
    """Live progress bar plus one line per phase, policy step and warning."""

    def __init__(self, console: Console, record: MigrationRecord) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn  # noqa: PLC0415

        self.console = console
        self.vm = record.vm_name
        self.progress: Progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[phase]:<14}"),
            BarColumn(bar_width=30),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[rate]:>11}"),
            TextColumn("dirty {task.fields[dirty]:>11}"),
            TextColumn("iter {task.fields[iteration]:>2}"),
            TextColumn("ETA {task.fields[eta]:>7}"),
            console=console,
            disable=not console.is_terminal,  # piped: the phase lines are the log
        )
        self.task: TaskID = self.progress.add_task(
            record.vm_name, total=100, phase="pending", rate="-", dirty="-", iteration="-", eta="-"
        )

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def line(self, text: str, elapsed: float | None = None) -> None:
        stamp = f"{elapsed:7.1f}s " if elapsed is not None else " " * 9
        self.progress.console.print(f"[dim]{stamp}[/]{text}")

    def event(self, ev: MigrationEvent, record: MigrationRecord) -> None:
        p = ev.progress
        elapsed = p.elapsed if p is not None else None
        if p is not None:
            self.progress.update(
                self.task,
                completed=p.percent,
                phase=p.phase.value,
                rate=rate_text(p.transfer_rate),
                # auto-converge's throttle beside the rate it holds down
                dirty=rate_text(p.dirty_rate) + (f" throttle {p.throttle}%" if p.throttle else ""),
                iteration=str(p.iteration or "-"),
                eta=seconds_text(p.eta),
            )
        kind = ev.kind.value
        if kind == "phase":
            self.line(self._phase_text(ev, record), elapsed)
        elif kind == "step":
            self.line(f"[cyan]policy[/] {ev.message.strip()}", elapsed)
        elif kind == "warning":
            self.line(f"[yellow]warning[/] {ev.message}", elapsed)

    @staticmethod
    def _phase_text(ev: MigrationEvent, record: MigrationRecord) -> str:
        phase = ev.phase.value
        if phase == "requesting" and record.target:
            return (
                f"[bold]{phase}[/] to {record.target_name or record.target} ({record.mode.value})"
            )
        if ev.phase.terminal:
            color = {"completed": "green", "cancelled": "yellow"}.get(phase, "red")
            return f"[bold {color}]{phase}[/]"  # the summary says why
        note = f" [dim]{ev.message}[/]" if ev.message else ""
        return f"[bold]{phase}[/]{note}"


def follow(migration: Migration, console: Console) -> MigrationRecord:
    """Show the migration until it ends. Ctrl-C asks for a cancel, a second one gives up."""
    interrupts = Interrupts()
    cancel_asked = False
    try:
        with interrupts.installed(), Display(console, migration.record) as display:
            for ev in migration.events():
                if interrupts.count and not cancel_asked:
                    cancel_asked = True
                    if migration.cancel():
                        display.line("[yellow]cancel requested[/]; Ctrl-C again stops watching")
                    else:
                        display.line("[yellow]too late to cancel[/]: past the commit point")
                display.event(ev, migration.record)
    except GiveUp:
        rec = migration.record
        click.echo(
            f"vmmove: warning: stopped watching migration {rec.id} of {rec.vm_name}; "
            f"it goes on ({rec.phase.value}, VM on {vm_location(rec)})",
            err=True,
        )
        raise UserError("interrupted", ExitCode.INTERRUPTED) from None
    return migration.record


def follow_and_report(migration: Migration, as_json: bool, header: str) -> None:
    """Follow, summarise, then let ``wait()`` raise the outcome for the exit code."""
    console = new_console(stderr=as_json)  # with --json, stdout holds the JSON alone
    console.print(header)
    record = follow(migration, console)
    if as_json:
        print_json(record)
    else:
        summary(console, record)
    migration.wait()


class FleetDisplay:
    """One bar for the whole plan, one per move in flight, one line per move that ends."""

    def __init__(self, console: Console, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

        self.console = console
        self.progress: Progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(bar_width=30),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"),
            console=console,
            disable=not console.is_terminal,  # piped: the lines are the log
        )
        self.overall: TaskID = self.progress.add_task("all moves", total=max(total, 1), info="")
        self.bars: dict[str, TaskID] = {}
        self.done = 0

    def __enter__(self) -> FleetDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, ev: Any, running: list[tuple[Any, Migration]]) -> None:
        kind = ev.kind
        if kind == "start":
            m = ev.migration
            label = f"{ev.vm_name} -> {ev.target}"
            self.bars[m.id] = self.progress.add_task(label, total=100, info="pending")
            if ev.attempt > 1:
                self.line(f"[cyan]retry[/] {ev.vm_name} on {ev.target} (attempt {ev.attempt})")
        elif kind == "end":
            m = ev.migration
            bar = self.bars.pop(m.id, None)
            if bar is not None:
                self.progress.remove_task(bar)
            rec = m.record
            if rec.phase.value == "completed":
                self.done += 1
                self.progress.update(self.overall, completed=self.done)
                took = seconds_text(rec.figures.total_time)
                self.line(f"[green]✓[/] {ev.vm_name} {ev.source} -> {rec.vm_host} ({took})")
            else:
                self.line(f"[red]✗[/] {ev.vm_name} to {ev.target}: {ev.message}")
        elif kind == "skip":
            self.line(f"[yellow]■[/] {ev.vm_name} stays on {ev.source}: {ev.message}")
        elif kind == "tick":
            for _, m in running:
                bar = self.bars.get(m.id)
                if bar is None:
                    continue
                p = m.progress
                info = f"{p.phase.value:<14} {rate_text(p.transfer_rate):>11}"
                self.progress.update(bar, completed=p.percent, info=info)

    def line(self, text: str) -> None:
        self.progress.console.print(text)
