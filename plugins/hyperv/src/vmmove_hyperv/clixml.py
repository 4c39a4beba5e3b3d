"""PowerShell's error stream as it crosses WinRM: stderr that begins ``#< CLIXML``.

A remote ``powershell -EncodedCommand`` serialises its error, warning, verbose and progress
records as CLIXML on stderr::

    #< CLIXML
    <Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">
      <S S="Error">Get-VM : Hyper-V was unable to find a virtual machine..._x000D__x000A_</S>
      <S S="Error">At line:1 char:1_x000D__x000A_</S> ...
    </Objs>

:func:`parse` returns the error messages (one per error record: its first line, without
the position and ``+ CategoryInfo`` lines) and the warnings. Characters XML cannot carry
arrive escaped as ``_xHHHH_``. Text that is not CLIXML is returned as one message.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

__all__ = ["Stream", "parse"]

MARKER = "#< CLIXML"
_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
#: The lines PowerShell adds after an error's message: where it happened and its category.
_TRAILER = re.compile(r"^(At line:\d+|At .+:\d+ char:\d+|\+ |\s+\+ |\s*$)")
#: PowerShell's underline of the failing code ("    ~~~~~"): a trailer only right after one
_UNDERLINE = re.compile(r"^\s*~+\s*$")


def _trailers(lines: list[str]) -> list[bool]:
    """Which lines belong to an error record's position/category trailer."""
    out: list[bool] = []
    for line in lines:
        after = bool(out) and out[-1] and bool(lines[len(out) - 1].strip())
        out.append(bool(_TRAILER.match(line)) or (after and bool(_UNDERLINE.match(line))))
    return out


@dataclass
class Stream:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _unescape(text: str) -> str:
    def char(match: re.Match[str]) -> str:
        code = int(match.group(1), 16)
        # A lone surrogate cannot stand in a str that is encoded later: keep it visible.
        return match.group(0) if 0xD800 <= code <= 0xDFFF else chr(code)

    return _ESCAPE.sub(char, text)


def parse(stderr: str) -> Stream:
    """The error and warning messages in a command's stderr (CLIXML or plain text)."""
    text = stderr.lstrip("\ufeff")
    if not text.strip():
        return Stream()
    if not text.lstrip().startswith(MARKER):
        return Stream(errors=_records(text.splitlines()))
    body = text.lstrip()[len(MARKER) :].strip()
    if "<!DOCTYPE" in body or "<!ENTITY" in body:
        return Stream(errors=["(a CLIXML error stream with a document type, not read)"])
    try:
        root = ET.fromstring(body)  # noqa: S314 (no DTD: refused above)
    except ET.ParseError:
        return Stream(errors=[_unescape(body)[:500] or "(unreadable CLIXML error stream)"])
    lines: dict[str, list[str]] = {"error": [], "warning": []}
    for node in root.iter():
        if not node.tag.endswith("}S") and node.tag != "S":
            continue
        kind = (node.get("S") or "").lower()
        if kind in lines:
            lines[kind].extend(_unescape(node.text or "").splitlines() or [""])
    return Stream(
        errors=_records(lines["error"]),
        warnings=[w.strip() for w in lines["warning"] if w.strip()],
    )


def _records(lines: list[str]) -> list[str]:
    """One message per error record: the lines up to its position/category trailer."""
    trailer = _trailers(lines)
    if not any(line.strip() and t for line, t in zip(lines, trailer, strict=True)):
        # No position lines: a writer that puts one message per line.
        return [" ".join(line.split()) for line in lines if line.strip()]
    messages: list[str] = []
    current: list[str] = []
    in_trailer = False
    for line, is_trailer in zip(lines, trailer, strict=True):
        if is_trailer:
            in_trailer = bool(current) or in_trailer
            continue
        if in_trailer and current:
            messages.append(" ".join(current))
            current = []
        in_trailer = False
        current.append(line.strip())
    if current:
        messages.append(" ".join(current))
    return [m for m in (" ".join(m.split()) for m in messages) if m]
