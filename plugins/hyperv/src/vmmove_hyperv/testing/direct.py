"""A WinRM protocol double that runs scripts on a :class:`PowerShell` in-process, without
the wire: for tests of the backend and the emulation that need neither SOAP nor
authentication (the wire-level endpoint, :mod:`vmmove_hyperv.testing.wsman`, is what users
and the end-to-end tests connect to).

It keeps WinRM's shape where the backend depends on it: the command line carries the
script as ``-EncodedCommand``, output is read with Receive calls that answer "no output
yet" (pywinrm's ``WinRMOperationTimeoutError``) after the operation timeout while the
command runs, and errors come back as CLIXML on stderr.
"""

from __future__ import annotations

import base64
import itertools
import re
import threading
from collections.abc import Callable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from vmmove_hyperv.testing.shell import Output, PowerShell
from vmmove_hyperv.winrm_client import Settings, WinRMProtocol

__all__ = ["DirectProtocol", "direct_factory"]

_ENCODED = re.compile(r"-EncodedCommand\s+([A-Za-z0-9+/=]+)", re.I)


class DirectProtocol:
    """One client's "HTTP session" to host ``host`` of ``shell``."""

    def __init__(self, shell: PowerShell, host: str, operation_timeout: float) -> None:
        self.shell = shell
        self.host = host
        self.operation_timeout_sec = operation_timeout
        self._ids = itertools.count(1)
        self._running: dict[str, tuple[threading.Event, list[Output]]] = {}

    def open_shell(self, *, codepage: int = 437) -> str:
        return f"shell-{next(self._ids)}"

    def run_command(self, shell_id: str, command: str) -> str:
        match = _ENCODED.search(command)
        script = base64.b64decode(match.group(1)).decode("utf-16-le") if match else command
        done, result = threading.Event(), []

        def run() -> None:
            try:
                result.append(self.shell.run(self.host, script))
            except Exception as exc:  # the emulation broke: a PowerShell error, visibly
                result.append(Output(errors=[f"emulation error: {exc!r}"], exit_code=1))
            done.set()

        command_id = f"{shell_id}-cmd-{next(self._ids)}"
        self._running[command_id] = (done, result)
        threading.Thread(target=run, name="vmmove-hyperv-direct", daemon=True).start()
        return command_id

    def get_command_output_raw(
        self, shell_id: str, command_id: str
    ) -> tuple[bytes, bytes, int, bool]:
        from winrm.exceptions import WinRMOperationTimeoutError  # noqa: PLC0415

        done, result = self._running[command_id]
        if not done.wait(self.operation_timeout_sec):
            raise WinRMOperationTimeoutError()
        out = result[0]
        return out.stdout.encode(), clixml(out.errors).encode(), out.exit_code, True

    def cleanup_command(self, shell_id: str, command_id: str) -> None:
        self._running.pop(command_id, None)

    def close_shell(self, shell_id: str, close_session: bool = True) -> None:
        pass


def clixml(errors: list[str]) -> str:
    """Error messages as powershell.exe writes them on stderr."""
    if not errors:
        return ""
    lines = "".join(
        f'<S S="Error">{escape(_serialize(line))}_x000D__x000A_</S>'
        for message in errors
        for line in message.splitlines()
    )
    return (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" '
        f'xmlns="http://schemas.microsoft.com/powershell/2004/04">{lines}</Objs>'
    )


def _serialize(text: str) -> str:
    """PowerShell's string escapes: what XML cannot carry, and ``_`` before ``xHHHH_``."""
    text = re.sub(r"_(?=x[0-9A-Fa-f]{4}_)", "_x005F_", text)
    return "".join(f"_x{ord(c):04X}_" if ord(c) < 32 else c for c in text)


def direct_factory(shell: PowerShell) -> Callable[[str, Settings, float], WinRMProtocol]:
    """A ``protocol_factory`` for :class:`~vmmove_hyperv.backend.HyperVBackend` whose hosts
    are the fabric's host names (``hyperv://hv1,hv2``)."""

    def factory(url: str, settings: Settings, limit: float) -> WinRMProtocol:
        return DirectProtocol(shell, urlsplit(url).hostname or "", settings.operation_timeout)

    return factory
