"""The ``vmmove`` command line: list an estate, pre-check and run migrations, watch them.

The connection target is, first to last: ``--uri``, ``$VMMOVE_URI``, ``uri`` in the
config file (``--config``, ``$VMMOVE_CONFIG``, else ``config.toml`` in the user config
directory), then the built-in simulator ``sim://``. The password comes from
``--ask-password`` (hidden prompt), ``$VMMOVE_PASSWORD`` or the config file (which must
then be readable by its owner only), never from the command line.

Exit codes:

====  ==================================================================================
0     done
1     unexpected internal error (a bug: ``VMMOVE_DEBUG=1`` shows the traceback)
2     usage error or bad input: option, URI, config, policy; no backend for the scheme
3     refused: pre-checks, the target's reservation, a conflicting migration, unsupported
4     the migration failed or timed out (the error names where the VM runs)
5     the migration was cancelled (the VM runs on its source)
6     not found: the VM, host or migration named does not exist
7     connection or authentication failure
8     ``--wait`` ran out (``WaitTimeout``): the migration goes on
130   interrupted (a second Ctrl-C during ``migrate``: the migration goes on unwatched)
====  ==================================================================================

Startup matters (``vmmove --help`` runs often): rich, the engine and the plugins are
imported inside the commands that need them.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

# The exit codes come from the one outcome classifier.
from vmmove.outcomes import ExitCode, exit_code, outcome_of

if TYPE_CHECKING:
    from types import FrameType

    from rich.console import Console
    from rich.progress import Progress, TaskID

    from vmmove import Connection, Migration, MigrationEvent, MigrationRecord

__all__ = ["ExitCode", "cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


EXIT_CODES_HELP = """\b
Exit codes:
  0    done
  1    unexpected internal error (VMMOVE_DEBUG=1 shows the traceback)
  2    usage error or bad input (option, URI, config, policy, unknown scheme)
  3    refused (pre-checks, reservation, conflict, unsupported)
  4    migration failed or timed out
  5    migration cancelled
  6    VM, host or migration not found
  7    connection or authentication failure
  8    wait timed out; the migration goes on
  130  interrupted"""

DEMO_VM, DEMO_TARGET, DEMO_SPEED = "app-1", "edge-2", 5.0


# ---- errors ---------------------------------------------------------------------------------
class _UserError(Exception):
    """An error for the user: :class:`_CLI` prints it as one line and exits with its code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _leave(message: str, code: int) -> NoReturn:
    click.echo(f"vmmove: error: {message}", err=True)
    raise click.exceptions.Exit(code)


def _usage_error(exc: click.UsageError) -> NoReturn:
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    _leave(exc.format_message() + hint, ExitCode.USAGE)


class _CLI(click.Group):
    """Turns every error into one line and an exit code; never a traceback for bad input."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        from vmmove.errors import VMMoveError  # noqa: PLC0415

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except _UserError as exc:
            _leave(str(exc), exc.exit_code)
        except click.UsageError as exc:
            _usage_error(exc)
        except click.ClickException as exc:
            _leave(exc.format_message(), exc.exit_code)
        except VMMoveError as exc:
            _leave(str(exc), exit_code(exc))
        except KeyboardInterrupt:
            _leave("interrupted", ExitCode.INTERRUPTED)
        except Exception as exc:
            if os.environ.get("VMMOVE_DEBUG"):
                raise
            _leave(
                f"internal error: {type(exc).__name__}: {exc} "
                "(set VMMOVE_DEBUG=1 to see the traceback)",
                ExitCode.INTERNAL,
            )


# ---- configuration and connection ---------------------------------------------------------------
@dataclass
class _Settings:
    uri: str | None
    uri_from_command_line: bool
    config: Path | None
    ask_password: bool


@dataclass
class _Config:
    uri: str | None = None
    password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _config_path(settings: _Settings) -> tuple[Path, bool]:
    """The config file and whether the user named it (then it must exist)."""
    if settings.config is not None:
        return settings.config, True
    import platformdirs  # noqa: PLC0415

    return Path(platformdirs.user_config_dir("vmmove")) / "config.toml", False


def _read_config(path: Path, explicit: bool) -> _Config:
    import tomllib  # noqa: PLC0415

    from vmmove.errors import InvalidInput  # noqa: PLC0415

    try:
        fh = path.open("rb")
    except FileNotFoundError:
        if explicit:
            raise InvalidInput(f"config file {path} does not exist") from None
        return _Config()
    except OSError as exc:
        raise InvalidInput(f"cannot read config file {path}: {exc.strerror}") from None
    with fh:
        mode = os.fstat(fh.fileno()).st_mode
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            # The decoder names line and column, never the value: no secret leaks here.
            raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"uri", "password", "options"})
    if unknown:
        raise InvalidInput(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    uri, options = data.get("uri"), data.get("options", {})
    if uri is not None and not isinstance(uri, str):
        raise InvalidInput(f"config file {path}: uri must be a string")
    if not isinstance(options, dict):
        raise InvalidInput(f"config file {path}: [options] must be a table")
    if "store" in options:
        raise InvalidInput(f"config file {path}: 'store' cannot be set from a config file")
    password = options.pop("password", None) or data.get("password")
    if password is not None and not isinstance(password, str):
        raise InvalidInput(f"config file {path}: password must be a string")
    holds_password = password is not None or (uri is not None and _has_password(uri))
    if holds_password and os.name == "posix" and mode & 0o077:
        raise InvalidInput(
            f"config file {path} holds a password but others can read it "
            f"(mode {mode & 0o777:04o}); run: chmod 600 {path}"
        )
    return _Config(uri=uri, password=password, options=options)


def _connect(ctx: click.Context) -> Connection:
    import vmmove  # noqa: PLC0415

    settings: _Settings = ctx.find_object(_Settings) or _Settings(None, False, None, False)
    uri = settings.uri
    if uri and settings.uri_from_command_line and _has_password(uri):
        # Anyone can read a command line (ps, shell history): refuse before using it.
        raise vmmove.InvalidInput(
            "the --uri holds a password; use VMMOVE_PASSWORD, --ask-password or the config file"
        )
    config = _read_config(*_config_path(settings))
    uri = uri or config.uri
    options = dict(config.options)
    password: str | None
    if settings.ask_password:
        password = click.prompt("Password", hide_input=True, err=True)
    else:
        password = os.environ.get("VMMOVE_PASSWORD") or config.password or _keyring(uri)
    if password:
        name = _secret_option(uri)
        if name is not None:
            options[name] = vmmove.Secret(password)
    if uri is None and sys.stderr.isatty():
        click.echo(
            "vmmove: no --uri, VMMOVE_URI or config file: using the built-in simulator",
            err=True,
        )
    return vmmove.connect(uri, **options)


def _secret_option(uri: str | None) -> str | None:
    """The option the backend takes the secret as: ``password``, or its one declared secret
    (KubeVirt's ``token``); ``None`` when it declares options and no secret among them."""
    import vmmove  # noqa: PLC0415
    from vmmove.plugins import plugin_manager  # noqa: PLC0415

    scheme = urlsplit(uri or os.environ.get("VMMOVE_URI") or vmmove.DEFAULT_URI).scheme
    try:
        spec = plugin_manager().backends.get(scheme)
    except vmmove.VMMoveError:
        return "password"  # connect() says what is wrong with the scheme
    if spec.options is None:
        return "password"  # a backend that parses its own options
    secrets = [o.name for o in spec.options if o.secret]
    return "password" if "password" in secrets else next(iter(secrets), None)


def _keyring(uri: str | None) -> str | None:
    """The password stored for this estate in the system keyring, if keyring is installed:
    ``keyring set vmmove <uri without password>``."""
    if not uri:
        return None
    try:
        import keyring  # type: ignore[import-not-found]  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    try:
        found = keyring.get_password("vmmove", uri)
    except Exception:  # no usable keyring backend here: fall through to no password
        return None
    return str(found) if found else None


def _has_password(uri: str) -> bool:
    from urllib.parse import urlsplit  # noqa: PLC0415

    try:
        return urlsplit(uri).password is not None
    except ValueError:
        return False  # malformed: connect() says so


# ---- rendering ------------------------------------------------------------------------------
def _console(stderr: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 500  # piped: tables at their natural width, never cut
    return console


def _plain(obj: Any) -> Any:
    """Dataclasses to dicts, enums to their values, anything else JSON can hold as is."""
    import dataclasses  # noqa: PLC0415

    from vmmove.secrets import Secret  # noqa: PLC0415

    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Secret):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, set | frozenset):
        return sorted(_plain(v) for v in obj)
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    import json  # noqa: PLC0415

    click.echo(json.dumps(_plain(obj), indent=2))


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f}"


def _where(record: MigrationRecord) -> str:
    """Where the VM runs, by name (the id is in --json)."""
    return record.vm_host_name or record.vm_host or "unknown host"


def _rate(n: float | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.0f} MiB/s"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {s % 60:02.0f} s"


def _table(*columns: str) -> Any:
    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, column in enumerate(columns):
        # Only the last column wraps: narrow terminals keep one line per row.
        table.add_column(column, no_wrap=i < len(columns) - 1)
    return table


# ---- the command group ----------------------------------------------------------------------
@click.group(
    cls=_CLI, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="vmmove")
@click.option(
    "--uri",
    envvar="VMMOVE_URI",
    metavar="URI",
    help="Hypervisor to connect to, e.g. vsphere://admin@vc.example/DC1 [env: VMMOVE_URI].",
)
@click.option(
    "--config",
    envvar="VMMOVE_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (TOML) [env: VMMOVE_CONFIG; default: user config dir/config.toml].",
)
@click.option("--ask-password", is_flag=True, help="Prompt for the password (hidden input).")
@click.pass_context
def cli(ctx: click.Context, uri: str | None, config: Path | None, ask_password: bool) -> None:
    """Move running virtual machines between hosts, on any hypervisor, through one API."""
    source = ctx.get_parameter_source("uri")
    ctx.obj = _Settings(
        uri=uri,
        uri_from_command_line=source is click.core.ParameterSource.COMMANDLINE,
        config=config,
        ask_password=ask_password,
    )


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def _spec_options(func: F) -> F:
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
        ]
    ):
        func = option(func)
    return func


def _spec_kwargs(
    *,
    live: bool,
    cold: bool,
    auto: bool,
    policy: str,
    max_downtime: int | None,
    bandwidth: int | None,
) -> dict[str, Any]:
    if live + cold + auto > 1:
        raise click.UsageError("--live, --cold and --auto exclude each other")
    mode = "live" if live else "cold" if cold else "auto"
    return {"mode": mode, "policy": policy, "max_downtime": max_downtime, "bandwidth": bandwidth}


# ---- read commands --------------------------------------------------------------------------
@cli.command()
@_json_option
def backends(as_json: bool) -> None:
    """Installed backends and what they can do."""
    from vmmove.plugins import plugin_manager  # noqa: PLC0415

    plugins = plugin_manager()
    specs = plugins.backends.all()
    if as_json:
        _print_json(
            {
                "backends": [
                    {
                        "scheme": s.scheme,
                        "description": s.description,
                        "plugin": s.plugin,
                        "capabilities": _plain(s.capabilities),
                    }
                    for s in specs
                ],
                "broken": [{"plugin": k, "error": v} for k, v in sorted(plugins.broken.items())],
            }
        )
        return
    console = _console()
    for s in specs:
        console.print(f"[bold]{s.scheme}://[/]  {s.description} [dim](plugin {s.plugin})[/]")
        caps = ", ".join(s.capabilities.names()) if s.capabilities else "[dim]not declared[/]"
        console.print(f"    capabilities: {caps}")
    for name, why in sorted(plugins.broken.items()):
        console.print(f"[red]plugin {name} failed to load:[/] {why}")


@cli.command()
@_json_option
@click.pass_context
def hosts(ctx: click.Context, as_json: bool) -> None:
    """Hosts of the estate, their state and room."""
    with _connect(ctx) as conn:
        items = conn.hosts()
    if as_json:
        _print_json(items)
        return
    table = _table("Host", "Cluster", "State", "vCPUs", "Memory GiB", "Free GiB", "CPU", "Extra")
    for h in items:
        state = {"up": "green", "maintenance": "yellow"}.get(h.state.value, "red")
        table.add_row(
            h.name,
            h.cluster,
            f"[{state}]{h.state.value}[/]",
            f"{h.allocated.cpus}/{h.capacity.cpus}",
            f"{_gib(h.allocated.memory)}/{_gib(h.capacity.memory)}",
            _gib(h.free_memory),
            h.cpu.model or h.cpu.arch,
            " ".join(f"{k}={v}" for k, v in h.extra.items()),
        )
    _console().print(table)


@cli.command()
@_json_option
@click.pass_context
def vms(ctx: click.Context, as_json: bool) -> None:
    """Virtual machines, where they run, and whether they can move live."""
    with _connect(ctx) as conn:
        items = conn.vms()
        names = {h.id: h.name for h in conn.hosts()} if not as_json else {}
    if as_json:
        _print_json(items)
        return
    table = _table("VM", "Host", "Power", "Memory", "vCPUs", "Storage", "Dirties", "Live")
    for v in items:
        live = "yes" if v.live_migratable else f"[yellow]no[/]: {v.not_migratable_reason or '?'}"
        table.add_row(
            v.name,
            names.get(v.host, v.host),  # the name people know; the id is in --json
            v.power.value,
            _size(v.memory),
            str(v.vcpus),
            v.storage.value,
            _rate(v.dirty_rate),
            live,
        )
    _console().print(table)


@cli.command()
@click.argument("vm")
@_spec_options
@_json_option
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
    as_json: bool,
) -> None:
    """Run the pre-checks for moving VM, without moving anything. Exit 3 if refused."""
    kwargs = _spec_kwargs(
        live=live,
        cold=cold,
        auto=auto,
        policy=policy,
        max_downtime=max_downtime,
        bandwidth=bandwidth,
    )
    with _connect(ctx) as conn:
        problems = conn.check(vm, to, **kwargs)
    refused = any(p.severity == "error" for p in problems)
    if as_json:
        _print_json({"vm": vm, "target": to, "ok": not refused, "problems": problems})
    else:
        console = _console()
        where = f" to {to}" if to else ""
        if refused:
            console.print(f"[red]✗[/] {vm} cannot move{where}:")
        else:
            console.print(f"[green]✓[/] {vm} can move{where}")
        for p in problems:
            color = "red" if p.severity == "error" else "yellow"
            console.print(f"  [{color}]{p.severity:<7}[/] {p.code:<16} {p.message}")
    if refused:
        ctx.exit(ExitCode.REFUSED)


# ---- following a migration ------------------------------------------------------------------
class _GiveUp(BaseException):
    """Raised by the second Ctrl-C: stop watching now, whatever the engine is doing."""


class _Interrupts:
    """Counts Ctrl-C while a migration runs. The first only sets a flag (the follow loop
    asks for the cancel between events, outside any engine lock); the second gives up."""

    def __init__(self) -> None:
        self.count = 0

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            raise _GiveUp

    @contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only; nothing to install
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class _Display:
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

    def __enter__(self) -> _Display:
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
                rate=_rate(p.transfer_rate),
                dirty=_rate(p.dirty_rate),
                iteration=str(p.iteration or "-"),
                eta=_seconds(p.eta),
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


def _follow(migration: Migration, console: Console) -> MigrationRecord:
    """Show the migration until it ends. Ctrl-C asks for a cancel, a second one gives up."""
    interrupts = _Interrupts()
    cancel_asked = False
    try:
        with interrupts.installed(), _Display(console, migration.record) as display:
            for ev in migration.events():
                if interrupts.count and not cancel_asked:
                    cancel_asked = True
                    if migration.cancel():
                        display.line("[yellow]cancel requested[/]; Ctrl-C again stops watching")
                    else:
                        display.line("[yellow]too late to cancel[/]: past the commit point")
                display.event(ev, migration.record)
    except _GiveUp:
        rec = migration.record
        click.echo(
            f"vmmove: warning: stopped watching migration {rec.id} of {rec.vm_name}; "
            f"it goes on ({rec.phase.value}, VM on {_where(rec)})",
            err=True,
        )
        raise _UserError("interrupted", ExitCode.INTERRUPTED) from None
    return migration.record


def _summary(console: Console, record: MigrationRecord) -> None:
    if record.error_type and outcome_of(record.error_type).exit_code is ExitCode.REFUSED:
        return  # nothing moved; the error line says why
    phase = record.phase.value
    mark = {"completed": "[green]✓[/]", "cancelled": "[yellow]■[/]"}.get(phase, "[red]✗[/]")
    where = _where(record) if record.vm_host else "[red]unknown host[/]"
    console.print()
    console.print(f"{mark} migration {record.id} {phase}: {record.vm_name} runs on {where}")
    f = record.figures
    downtime = "-" if f.downtime_ms is None else f"{f.downtime_ms:.0f} ms"
    rows = [
        ("total time", _seconds(f.total_time)),
        ("downtime", downtime),
        ("data sent", _size(f.data_sent)),
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
    for w in record.warnings:
        console.print(f"  [yellow]warning[/]     {w}")


def _run(migration: Migration, as_json: bool, header: str) -> None:
    """Follow, summarise, then let ``wait()`` raise the outcome for the exit code."""
    console = _console(stderr=as_json)  # with --json, stdout holds the JSON alone
    console.print(header)
    record = _follow(migration, console)
    if as_json:
        _print_json(record)
    else:
        _summary(console, record)
    migration.wait()


# ---- migration commands ---------------------------------------------------------------------
@cli.command()
@click.argument("vm")
@_spec_options
@_json_option
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
    as_json: bool,
) -> None:
    """Move VM to another host and watch it. Ctrl-C cancels (before the commit point)."""
    kwargs = _spec_kwargs(
        live=live,
        cold=cold,
        auto=auto,
        policy=policy,
        max_downtime=max_downtime,
        bandwidth=bandwidth,
    )
    with _connect(ctx) as conn:
        migration = conn.migrate(vm, to, **kwargs)
        rec = migration.record
        header = (
            f"Migration [bold]{rec.id}[/]: {rec.vm_name} from {rec.source_name or rec.source} "
            f"to {rec.target_name or rec.target or 'the host placement chooses'} (Ctrl-C cancels)"
        )
        _run(migration, as_json, header)


@cli.command()
@click.argument("migration_id", metavar="ID")
@click.pass_context
def cancel(ctx: click.Context, migration_id: str) -> None:
    """Ask migration ID to cancel, wherever it is supervised. Exit 3 if it is past its
    commit point or over."""
    from vmmove.journal import Journal  # noqa: PLC0415

    journal = Journal()
    record = journal.get(migration_id)
    if not record.phase.cancellable:
        raise _UserError(
            f"migration {record.id} cannot be cancelled now ({record.phase.value}; "
            f"VM on {_where(record)})",
            ExitCode.REFUSED,
        )
    # The process that supervises it reads the request on its next loop.
    journal.request_cancel(record.id)
    click.echo(
        f"cancel requested for migration {record.id} ({record.vm_name}, {record.phase.value}); "
        f"follow it with: vmmove show {record.id}"
    )


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@_json_option
def history(limit: int, as_json: bool) -> None:
    """Recent migrations from the journal, newest first."""
    from vmmove.journal import Journal  # noqa: PLC0415

    records = Journal().list(limit=limit)
    if as_json:
        _print_json(records)
        return
    table = _table("ID", "VM", "FROM", "TO", "PHASE", "VM ON", "WHEN")
    for r in records:
        when = datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            r.id,
            r.vm_name,
            r.source_name or r.source,
            r.target_name or r.target or "-",
            r.phase.value,
            _where(r) if r.vm_host else "?",
            when,
        )
    _console().print(table)


@cli.command()
@click.argument("migration_id", metavar="ID")
@click.option(
    "--refresh",
    is_flag=True,
    help="For an ended record whose VM location is unknown, ask the platform now.",
)
@_json_option
@click.pass_context
def show(ctx: click.Context, migration_id: str, refresh: bool, as_json: bool) -> None:
    """One migration's record: phases with times, policy steps, figures, where the VM is."""
    from vmmove.journal import Journal  # noqa: PLC0415

    journal = Journal()
    record = journal.get(migration_id)
    if refresh and record.phase.terminal and record.located_at is None:
        settings: _Settings = ctx.find_object(_Settings) or _Settings(None, False, None, False)
        if settings.uri is None:
            ctx.obj = replace(settings, uri=journal.estate_of(migration_id))
        with _connect(ctx) as conn:
            record = conn.attach(migration_id).record
    if as_json:
        _print_json(record)
        return
    console = _console()
    console.print(f"Migration [bold]{record.id}[/]: {record.vm_name} ({record.backend})")
    start = record.history[0].at if record.history else record.created_at
    for t in record.history:
        note = f"  {t.note}" if t.note else ""
        console.print(f"  {t.at - start:8.1f}s {t.phase.value}{note}")
    _summary(console, record)


@cli.command()
@click.argument("migration_id", metavar="ID")
@_json_option
@click.pass_context
def attach(ctx: click.Context, migration_id: str, as_json: bool) -> None:
    """Supervise migration ID again after the process that started it died."""
    from vmmove.journal import Journal  # noqa: PLC0415

    journal = Journal()
    settings: _Settings = ctx.find_object(_Settings) or _Settings(None, False, None, False)
    if settings.uri is None:
        # Reconnect to the estate the record was written for (credentials from env/config).
        ctx.obj = replace(settings, uri=journal.estate_of(migration_id))
    with _connect(ctx) as conn:
        migration = conn.attach(migration_id)
        rec = migration.record
        header = f"Attached to migration [bold]{rec.id}[/]: {rec.vm_name}, {rec.phase.value}"
        _run(migration, as_json, header)


# ---- fleet commands: evacuate, rebalance, consolidate --------------------------------------
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


def _plan_text(console: Console, plan: Any) -> None:
    """The plan as a person reads it: what moves where and why, what stays and why."""
    moves, stays = plan.moves, plan.stays
    diverging = plan.diverging
    console.print(
        f"[bold]Plan[/]: {plan.kind} {plan.scope}: {len(moves)} move{'s' * (len(moves) != 1)}, "
        f"{len(stays)} stay{'s' * (len(stays) != 1)}; {_size(plan.data)} to send; busiest "
        f"link at least {_seconds(plan.predicted_seconds)} (policy {plan.policy})"
    )
    if diverging:
        console.print(
            f"  [yellow]{len(diverging)} move(s) predicted not to converge by pre-copy alone[/]: "
            "they rely on the policy's auto-converge or post-copy, or fail"
        )
    if moves:
        table = _table("#", "VM", "From", "To", "Memory", "Dirties", "Predicted", "Why")
        for i, m in enumerate(moves, 1):
            cost = m.cost
            predicted = _seconds(cost.seconds) if cost.converges else "[red]no convergence[/]"
            table.add_row(
                str(i),
                m.vm_name,
                m.source_name or m.source,
                m.target_name or m.target,
                _size(m.memory),
                _rate(m.dirty_rate),
                predicted,
                f"{m.reason}; {m.placement}",
            )
        console.print(table)
    if stays:
        table = _table("VM", "Host", "Stays because")
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


class _FleetDisplay:
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

    def __enter__(self) -> _FleetDisplay:
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
                took = _seconds(rec.figures.total_time)
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
                info = f"{p.phase.value:<14} {_rate(p.transfer_rate):>11}"
                self.progress.update(bar, completed=p.percent, info=info)

    def line(self, text: str) -> None:
        self.progress.console.print(text)


def _report_text(console: Console, report: Any) -> None:
    moved, stayed = report.moved, report.stayed
    mark = "[green]✓[/]" if report.ok else "[yellow]![/]"
    console.print()
    console.print(
        f"{mark} {report.plan.kind} {report.plan.scope}: {len(moved)} moved, "
        f"{len(stayed)} stayed, in {_seconds(report.makespan)}"
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

    console = _console(stderr=as_json)
    with _connect(ctx) as conn:
        plan = make_plan(conn)
        if dry_run:
            if as_json:
                _print_json({"plan": plan.to_dict()})
            else:
                _plan_text(console, plan)
            if plan.stays:
                ctx.exit(ExitCode.REFUSED)
            return
        _plan_text(console, plan)
        interrupts = _Interrupts()
        options: dict[str, Any] = {}
        if max_downtime is not None:
            options["max_downtime"] = max_downtime
        with interrupts.installed(), _FleetDisplay(console, len(plan.moves)) as display:
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
            except _GiveUp:
                raise _UserError(
                    "interrupted; moves in flight go on", ExitCode.INTERRUPTED
                ) from None
    if as_json:
        _print_json({"plan": plan.to_dict(), "report": report.to_dict()})
    else:
        _report_text(console, report)
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


@cli.command()
@click.argument("host")
@_fleet_options
@_json_option
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
    as_json: bool,
) -> None:
    """Move every VM off HOST (for maintenance), or say why one cannot move."""
    from vmmove import fleet  # noqa: PLC0415

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


@cli.command()
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
@_json_option
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


@cli.command()
@click.option("--cluster", help="Only this cluster (default: each cluster on its own).")
@_fleet_options
@_json_option
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


@cli.command()
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True, max=1000),
    default=DEMO_SPEED,
    show_default=True,
    help="How many times faster than real time the simulator runs.",
)
@_json_option
def demo(speed: float, as_json: bool) -> None:
    """Watch a live migration on the built-in simulator, in (sped-up) real time."""
    import vmmove  # noqa: PLC0415

    with vmmove.connect(f"sim://?speed={speed:g}") as conn:
        vm, target = conn.vm(DEMO_VM), conn.host(DEMO_TARGET)
        header = (
            f"[bold]vmmove demo[/]: live-migrating {vm.name} ({_size(vm.memory)}, the guest "
            f"writes {_rate(vm.dirty_rate)}) from {vm.host} to {target.name} over "
            f"{target.extra.get('link_mib_s', '?')} MiB/s, simulated at {speed:g}x real time"
        )
        _run(conn.migrate(vm.id, target.id), as_json, header)


def main() -> NoReturn:
    """The ``vmmove`` console script."""
    cli.main(prog_name="vmmove")


if __name__ == "__main__":
    main()
