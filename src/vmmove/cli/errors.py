"""How the CLI fails: :class:`UserError` for a command to raise, and :class:`CLIGroup`,
the group class that turns every error into one line on stderr and an exit code."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import click

from vmmove.outcomes import ExitCode, exit_code


class UserError(Exception):
    """An error for the user: :class:`CLIGroup` prints it as one line and exits with its code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def leave(message: str, code: int) -> NoReturn:
    click.echo(f"vmmove: error: {message}", err=True)
    raise click.exceptions.Exit(code)


def usage_error(exc: click.UsageError) -> NoReturn:
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    leave(exc.format_message() + hint, ExitCode.USAGE)


class CLIGroup(click.Group):
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
            usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        from vmmove.errors import VMMoveError  # noqa: PLC0415

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except UserError as exc:
            leave(str(exc), exc.exit_code)
        except click.UsageError as exc:
            usage_error(exc)
        except click.ClickException as exc:
            leave(exc.format_message(), exc.exit_code)
        except VMMoveError as exc:
            leave(str(exc), exit_code(exc))
        except KeyboardInterrupt:
            leave("interrupted", ExitCode.INTERRUPTED)
        except Exception as exc:
            if os.environ.get("VMMOVE_DEBUG"):
                raise
            leave(
                f"internal error: {type(exc).__name__}: {exc} "
                "(set VMMOVE_DEBUG=1 to see the traceback)",
                ExitCode.INTERNAL,
            )
