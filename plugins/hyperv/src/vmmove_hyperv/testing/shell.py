"""The seam between the fake WinRM endpoint (wire: SOAP, auth, shells, long-poll) and
the Hyper-V emulation behind it (what a PowerShell script does on a host)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Output:
    """What one PowerShell process printed and how it ended."""

    stdout: str = ""
    #: PowerShell error records' messages: the endpoint sends them on stderr as ``#< CLIXML``
    errors: list[str] = field(default_factory=list)
    exit_code: int = 0


class PowerShell(Protocol):
    def run(self, host: str, script: str) -> Output:
        """Run ``script`` (already decoded from ``-EncodedCommand``) on ``host``, one fresh
        process per call. May block for as long as the command would; the endpoint runs it
        on its own thread and long-polls the client meanwhile."""
        ...


@dataclass
class ScriptedShell:
    """A :class:`PowerShell` for testing the wire alone: it answers each script from
    ``answers`` (else echoes ``"host: script"``), records what it ran, and with ``hold`` set
    keeps a command running until the event is set (``started`` says it began)."""

    answers: dict[str, Output] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    hold: threading.Event | None = None
    hold_timeout: float = 10.0
    started: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, host: str, script: str) -> Output:
        with self.lock:
            self.seen.append((host, script))
        self.started.set()
        if self.hold is not None:
            self.hold.wait(self.hold_timeout)
        return self.answers.get(script, Output(stdout=f"{host}: {script}\n"))
