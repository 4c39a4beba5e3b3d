"""Backend options, declared as data and parsed once, the same way for every backend.

A backend declares what it accepts as a tuple of :class:`Option` (name, kind, default,
secret or not, doc) and registers it with its factory. The core parses the URI's query, the
keyword arguments of :func:`vmmove.connect` and the config file's values with
:func:`parse`: one dialect for booleans, durations, sizes and paths everywhere; anything
undeclared (a simulator-only ``clock`` on a real backend, a typo) is :class:`InvalidInput`
naming the options that exist. :func:`markdown_table` writes the options table of each
backend's docs page from the same declaration.

Kinds and what they accept (from a URI or a config file as text, from Python natively):

=========  ===================================================================
bool       ``True``/``False``; text ``1 0 true false yes no on off``
int        an int (not a bool); text in decimal
float      an int or float, finite; text in decimal
str        text
duration   seconds as a number; text with a unit: ``500ms``, ``30s``, ``5m``, ``2h``
size       bytes as an int; text with a unit: ``512KiB``, ``64MiB``, ``2GiB``, ``1TiB``
path       text or :class:`os.PathLike`; ``~`` is expanded
secret     text or :class:`~vmmove.secrets.Secret`; always handed over as ``Secret``
choice     one of ``choices``
list       a list or tuple of text; text split on ``separator`` (a comma, or ``" "``:
           any whitespace); handed over as a tuple, blanks dropped
map        a mapping of text to text; text ``key=value`` items split on ``separator``,
           the key before the last ``=`` (a key may hold ``=`` itself, a URI's query)
=========  ===================================================================
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from vmmove.errors import InvalidInput
from vmmove.secrets import Secret

__all__ = ["Kind", "Option", "markdown_table", "parse", "query_of"]

Kind = Literal[
    "bool", "int", "float", "str", "duration", "size", "path", "secret", "choice", "list", "map"
]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*([0-9]+)\s*(B|KiB|MiB|GiB|TiB)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_BYTES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, None: 1}


@dataclass(frozen=True, kw_only=True, slots=True)
class Option:
    """One option a backend accepts. ``default`` is what the backend gets when the caller
    says nothing (``None``: absent); a ``secret`` never appears in docs, logs or errors."""

    name: str
    kind: Kind
    doc: str
    default: Any = None
    choices: tuple[str, ...] = ()
    #: accepted in the URI's query string (secrets never are: URIs get logged)
    in_uri: bool = True
    #: between the items of a ``list`` or ``map`` given as text (``" "``: any whitespace)
    separator: Literal[",", " "] = ","

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise InvalidInput(f"option name {self.name!r} is not lower_snake_case")
        if (self.kind == "choice") != bool(self.choices):
            raise InvalidInput(f"option {self.name}: choices go with kind 'choice' only")
        if self.kind == "secret" and self.in_uri:
            raise InvalidInput(
                f"option {self.name}: a secret is never taken from a URI (in_uri=False)"
            )

    @property
    def secret(self) -> bool:
        return self.kind == "secret"

    def convert(self, value: Any, *, source: str) -> Any:
        """``value`` as this option's kind, or :class:`InvalidInput` saying what was wanted
        (never echoing a secret)."""
        try:
            return _CONVERT[self.kind](self, value)
        except (ValueError, TypeError, OverflowError):
            shown = "the value given" if self.secret else repr(value)
            raise InvalidInput(
                f"option {self.name} ({source}) wants {_wants(self)}, not {shown}"
            ) from None


def _bool(opt: Option, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(value)


def _int(opt: Option, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(value)
    return int(value)


def _float(opt: Option, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _str(opt: Option, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _duration(opt: Option, value: Any) -> float:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(value)
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    else:
        seconds = _float(opt, value)
    if seconds < 0:
        raise ValueError(value)
    return seconds


def _size(opt: Option, value: Any) -> int:
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(value)
        size = int(match.group(1)) * _BYTES[match.group(2)]
    else:
        size = _int(opt, value)
    if size < 0:
        raise ValueError(value)
    return size


def _path(opt: Option, value: Any) -> Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError(value)
    return Path(os.fspath(value)).expanduser()


def _secret(opt: Option, value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise TypeError("not text")
    return Secret(value)


def _choice(opt: Option, value: Any) -> str:
    if not isinstance(value, str) or value not in opt.choices:
        raise ValueError(value)
    return value


def _items(opt: Option, value: str) -> list[str]:
    parts = value.split() if opt.separator == " " else value.split(opt.separator)
    return [p.strip() for p in parts if p.strip()]


def _list(opt: Option, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(_items(opt, value))
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError(value)
    return tuple(v.strip() for v in value if v.strip())


def _map(opt: Option, value: Any) -> dict[str, str]:
    if isinstance(value, str):
        out = {}
        for item in _items(opt, value):
            key, sep, val = item.rpartition("=")
            if not sep or not key.strip():
                raise ValueError(item)
            out[key.strip()] = val.strip()
        return out
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(value)
    return {k.strip(): v.strip() for k, v in value.items()}


_CONVERT = {
    "bool": _bool,
    "int": _int,
    "float": _float,
    "str": _str,
    "duration": _duration,
    "size": _size,
    "path": _path,
    "secret": _secret,
    "choice": _choice,
    "list": _list,
    "map": _map,
}


def _wants(opt: Option) -> str:
    if opt.kind == "choice":
        return "one of " + ", ".join(opt.choices)
    between = "spaces" if opt.separator == " " else "commas"
    return _WANTS[opt.kind].format(between=between)


_WANTS = {
    "bool": "true or false (1/0, yes/no, on/off)",
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "duration": "a duration (seconds, or 500ms / 30s / 5m / 2h)",
    "size": "a size (bytes, or 512KiB / 64MiB / 2GiB)",
    "path": "a file or folder path",
    "secret": "text (a secret)",
    "list": "a list of text (or text, items separated by {between})",
    "map": "a mapping of text to text (or text: key=value items separated by {between})",
}


def query_of(uri: str) -> dict[str, str]:
    """The URI's query as name -> last value (``?a=1&a=2`` means 2, as every backend read it)."""
    try:
        query = urlsplit(uri).query
    except ValueError as exc:
        raise InvalidInput(f"malformed URI: {exc}") from None
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def parse(
    declared: Sequence[Option],
    *,
    uri: str = "",
    kwargs: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    scheme: str = "",
    passthrough: Iterable[str] = (),
) -> dict[str, Any]:
    """Every declared option's value, from (first wins) the keyword arguments, the URI's
    query, the config file, the declared default. Options whose value is ``None`` are left
    out. ``passthrough`` names URI query keys the backend reads itself (part of the
    platform's own URI, like libvirt's ``socket``): kept out of the check."""
    by_name = {o.name: o for o in declared}
    where = f"{scheme}:// " if scheme else ""
    sources: list[tuple[str, Mapping[str, Any]]] = [
        ("keyword argument", kwargs or {}),
        ("URI query", {k: v for k, v in query_of(uri).items() if k not in set(passthrough)}),
        ("config file", config or {}),
    ]
    for source, values in sources:
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            raise InvalidInput(
                f"unknown {where}option(s) {', '.join(unknown)} ({source}); known: {known}"
            )
        if source == "URI query":
            for name in values:
                if not by_name[name].in_uri:
                    raise InvalidInput(
                        f"option {name} cannot be given in the URI (it would be logged); "
                        "pass it as a keyword argument or in the config file"
                    )
    result: dict[str, Any] = {}
    for opt in declared:
        for source, values in sources:
            if opt.name in values and values[opt.name] is not None:
                result[opt.name] = opt.convert(values[opt.name], source=source)
                break
        else:
            if opt.default is not None:
                result[opt.name] = opt.default
    return result


def markdown_table(declared: Sequence[Option]) -> str:
    """The options table for a backend's docs page, from its declaration."""
    rows = ["| option | kind | default | in URI | what it does |", "|---|---|---|---|---|"]
    for o in declared:
        kind = "one of " + ", ".join(f"`{c}`" for c in o.choices) if o.choices else o.kind
        if o.kind in ("list", "map"):
            kind += " (spaces between)" if o.separator == " " else " (commas between)"
        default = "-" if o.default is None or o.secret else f"`{o.default}`"
        rows.append(
            f"| `{o.name}` | {kind} | {default} | {'yes' if o.in_uri else 'no'} | {o.doc} |"
        )
    return "\n".join(rows)
