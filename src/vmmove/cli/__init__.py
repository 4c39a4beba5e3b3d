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

The package: :mod:`~vmmove.cli.config` (settings, config file, secrets, the connection),
:mod:`~vmmove.cli.options` (options shared by commands), :mod:`~vmmove.cli.render` (text and
JSON output), :mod:`~vmmove.cli.live` (Ctrl-C and the live displays), :mod:`~vmmove.cli.errors`
(one line and an exit code per error) and the commands by family in
:mod:`vmmove.cli.commands`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click

from vmmove.cli.commands import COMMANDS

# The demo's VM and target, for scripts and tests that check what it printed.
from vmmove.cli.commands.demo import DEMO_SPEED as DEMO_SPEED
from vmmove.cli.commands.demo import DEMO_TARGET as DEMO_TARGET
from vmmove.cli.commands.demo import DEMO_VM as DEMO_VM
from vmmove.cli.config import Settings, connect, secret_option
from vmmove.cli.errors import CLIGroup
from vmmove.cli.live import Display

# The exit codes come from the one outcome classifier.
from vmmove.outcomes import ExitCode

__all__ = ["ExitCode", "cli", "main"]

# Names from the days of a single module, which tests and plugin tests still reach.
_connect = connect
_secret_option = secret_option
_Display = Display


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


@click.group(
    cls=CLIGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
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
    ctx.obj = Settings(
        uri=uri,
        uri_from_command_line=source is click.core.ParameterSource.COMMANDLINE,
        config=config,
        ask_password=ask_password,
    )


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> NoReturn:
    """The ``vmmove`` console script."""
    cli.main(prog_name="vmmove")
