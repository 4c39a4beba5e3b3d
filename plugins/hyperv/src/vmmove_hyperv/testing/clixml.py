"""PowerShell's ``#< CLIXML`` error stream, as powershell.exe writes it on stderr when it runs
non-interactively (``-EncodedCommand`` over WinRM).

Each error record becomes ``<S S="Error">`` elements, one per line of the rendered message,
each line ending ``_x000D__x000A_`` (CR LF). Strings use PowerShell's serializer escapes:
characters XML cannot carry (control characters, including CR, LF and TAB, lone
surrogates, U+FFFE/U+FFFF) are written ``_xHHHH_``, and a ``_`` that would read as the start
of such an escape is itself written ``_x005F_``. Windows PowerShell 5.1 often starts the
stream with a progress record ("Preparing modules for first use."), even when nothing
failed: :func:`encode_errors` adds it when asked.

Public names: :data:`HEADER`, :func:`escape`, :func:`unescape`, :func:`encode_errors`,
:func:`decode_errors`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from xml.sax.saxutils import escape as xml_escape

__all__ = ["HEADER", "NAMESPACE", "decode_errors", "encode_errors", "escape", "unescape"]

HEADER = "#< CLIXML\r\n"
NAMESPACE = "http://schemas.microsoft.com/powershell/2004/04"

_ESCAPE_RE = re.compile(r"_x([0-9A-Fa-f]{4})_")

_PROGRESS = (
    '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
    '<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record">'
    "<AV>Preparing modules for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC>"
    "<T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj>"
)


def _needs_escape(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF)


def escape(text: str) -> str:
    """PowerShell's serializer escape of a string (before XML escaping)."""
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch == "_" and _ESCAPE_RE.match(text, i):
            out.append("_x005F_")
        elif _needs_escape(ch):
            out.append(f"_x{ord(ch):04X}_")
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> str:
    """The inverse of :func:`escape`."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _lines(message: str) -> list[str]:
    lines = message.replace("\r\n", "\n").split("\n")
    return lines or [""]


def encode_errors(messages: Sequence[str], *, progress: bool = False) -> str:
    """The stderr text of a powershell.exe whose error records had ``messages``.

    Empty when there is nothing to say (no errors, no progress record)."""
    if not messages and not progress:
        return ""
    parts = [HEADER, f'<Objs Version="1.1.0.1" xmlns="{NAMESPACE}">']
    if progress:
        parts.append(_PROGRESS)
    for message in messages:
        for line in _lines(message):
            parts.append('<S S="Error">' + xml_escape(escape(line + "\r\n")) + "</S>")
    parts.append("</Objs>")
    return "".join(parts)


def decode_errors(stderr: str) -> list[str]:
    """The error lines of a ``#< CLIXML`` stream (progress and other records skipped).

    Raises :class:`ValueError` when ``stderr`` is not a CLIXML stream."""
    if not stderr.startswith(HEADER):
        raise ValueError("not a CLIXML stream")
    try:
        root = ET.fromstring(stderr[len(HEADER) :])  # noqa: S314 - our own output, in tests
    except ET.ParseError as exc:
        raise ValueError(f"malformed CLIXML: {exc}") from None
    out: list[str] = []
    for node in root.iter(f"{{{NAMESPACE}}}S"):
        if node.get("S") == "Error":
            out.append(unescape(node.text or "").removesuffix("\r\n"))
    return out
