"""What ``ConvertTo-Json`` prints, read the same way whichever PowerShell printed it.

Windows PowerShell 5.1 and PowerShell 7 differ in ways a reader must survive:

- one object is printed as an object, not a one-element list (``-AsArray`` exists on 7
  only): :func:`as_list` treats a single object as a list of one;
- enums arrive as numbers, or as names with ``-EnumsAsStrings`` (and, for Int64-backed
  enums, depending on the 7.x release): :func:`enum_value` accepts both;
- a ``-Depth`` too small replaces deeper objects by their type name (silently on 5.1, with a
  warning on 7.1+): :func:`as_object` refuses such a string where an object belongs, so a
  truncated answer is an error that says so, never a wrong reading.

Anything else that is not what was asked for is :class:`~vmmove.ConnectionFailed`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from vmmove.errors import ConnectionFailed

__all__ = [
    "Obj",
    "as_bool",
    "as_int",
    "as_list",
    "as_object",
    "as_text",
    "enum_value",
    "loads",
]

Obj = Mapping[str, Any]

#: What ConvertTo-Json leaves where -Depth ran out: a type name or a hashtable's text.
_TRUNCATED = re.compile(r"^(System\.[\w.`\[\]]+|Microsoft\.[\w.`\[\]]+|@\{.*\})$", re.S)


def loads(text: str, what: str) -> Any:
    """The JSON document in ``text`` (``None`` for no output: nothing matched)."""
    text = text.lstrip("\ufeff").strip()
    if not text:
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ConnectionFailed(
            f"{what}: the host printed something that is not JSON ({exc})"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def truncated(value: Any) -> bool:
    """Whether ``value`` is what ``-Depth`` left in place of an object or a list."""
    return isinstance(value, str) and _TRUNCATED.match(value.strip()) is not None


def as_list(value: Any, what: str) -> list[Any]:
    """A list of what was printed: nothing is ``[]``, one object is ``[object]``."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        if set(value) == {"value", "Count"} and isinstance(value["value"], list):
            # Windows PowerShell 5.1 prints some arrays as {"value": [...], "Count": n}
            # (the Count property the type system adds to System.Array).
            return list(value["value"])
        return [value]
    if truncated(value):
        raise ConnectionFailed(f"{what} was truncated by ConvertTo-Json -Depth: {value[:60]!r}")
    raise ConnectionFailed(f"{what}: expected a list, got {type(value).__name__}")


def as_object(value: Any, what: str) -> Obj:
    if isinstance(value, Mapping):
        return value
    if truncated(value):
        raise ConnectionFailed(f"{what} was truncated by ConvertTo-Json -Depth: {value[:60]!r}")
    raise ConnectionFailed(f"{what}: expected an object, got {type(value).__name__}")


def as_text(value: Any, what: str, *, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if isinstance(value, str):
        return value
    raise ConnectionFailed(f"{what}: expected text, got {type(value).__name__}")


def as_int(value: Any, what: str, *, default: int | None = None) -> int:
    """A whole number; PowerShell sometimes prints one as a float (``2.0``) or as text."""
    if value is None and default is not None:
        return default
    if isinstance(value, bool):
        raise ConnectionFailed(f"{what}: expected a number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,30}\s*", value):
        return int(value)
    raise ConnectionFailed(f"{what}: expected a whole number, got {_shown(value)}")


def as_bool(value: Any, what: str, *, default: bool | None = None) -> bool:
    if value is None and default is not None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConnectionFailed(f"{what}: expected true or false, got {_shown(value)}")


def enum_value(value: Any, names: Mapping[str, int], what: str) -> int:
    """An enum printed as its number (``2``) or its name (``"Running"``, any case)."""
    if isinstance(value, str) and not re.fullmatch(r"\s*-?[0-9]+\s*", value):
        by_name = {k.lower(): v for k, v in names.items()}
        key = value.strip().lower()
        if key in by_name:
            return by_name[key]
        raise ConnectionFailed(f"{what}: unknown name {_shown(value)}")
    return as_int(value, what)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
