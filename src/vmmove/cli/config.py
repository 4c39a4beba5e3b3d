"""Configuration and secrets: the global options (:class:`Settings`), the config file,
the password (prompt, environment, config file or system keyring) and :func:`connect`,
which puts them together into a connection."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

if TYPE_CHECKING:
    from vmmove import Connection


@dataclass
class Settings:
    uri: str | None
    uri_from_command_line: bool
    config: Path | None
    ask_password: bool


@dataclass
class _Config:
    uri: str | None = None
    password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    journal: str | None = None


def _config_path(settings: Settings) -> tuple[Path, bool]:
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
    unknown = sorted(set(data) - {"uri", "password", "options", "journal"})
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
    journal = data.get("journal")
    if journal is not None and not isinstance(journal, str):
        raise InvalidInput(f"config file {path}: journal must be a string")
    holds_password = (
        password is not None
        or (uri is not None and _has_password(uri))
        or (journal is not None and _has_password(journal))
    )
    if holds_password and os.name == "posix" and mode & 0o077:
        raise InvalidInput(
            f"config file {path} holds a password but others can read it "
            f"(mode {mode & 0o777:04o}); run: chmod 600 {path}"
        )
    return _Config(uri=uri, password=password, options=options, journal=journal)


def journal_setting(ctx: click.Context) -> str | None:
    """The journal: ``$VMMOVE_JOURNAL``, else the config file's ``journal`` (``None``: the
    default SQLite file)."""
    settings: Settings = ctx.find_object(Settings) or Settings(None, False, None, False)
    return os.environ.get("VMMOVE_JOURNAL") or _read_config(*_config_path(settings)).journal


def connect(ctx: click.Context) -> Connection:
    import vmmove  # noqa: PLC0415

    uri, options = connect_options(ctx)
    journal = None if os.environ.get("VMMOVE_JOURNAL") else journal_setting(ctx)
    return vmmove.connect(uri, journal=journal, **options)


def connect_options(ctx: click.Context) -> tuple[str | None, dict[str, Any]]:
    """The estate's URI and the backend's options (credentials included) for this command."""
    import vmmove  # noqa: PLC0415

    settings: Settings = ctx.find_object(Settings) or Settings(None, False, None, False)
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
        name = secret_option(uri)
        if name is not None:
            options[name] = vmmove.Secret(password)
    if uri is None and sys.stderr.isatty():
        click.echo(
            "vmmove: no --uri, VMMOVE_URI or config file: using the built-in simulator",
            err=True,
        )
    return uri, options


def secret_option(uri: str | None) -> str | None:
    """The option the backend takes the secret as: ``password``, or its one declared secret
    (KubeVirt's ``token``); ``None`` when it declares options and no secret among them."""
    import vmmove  # noqa: PLC0415
    from vmmove.plugins import load_plugins  # noqa: PLC0415

    scheme = urlsplit(uri or os.environ.get("VMMOVE_URI") or vmmove.DEFAULT_URI).scheme
    try:
        spec = load_plugins().backends.get(scheme)
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
