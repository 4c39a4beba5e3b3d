"""The seam between the fake WinRM endpoint (wire: SOAP, auth, shells, long-poll) and
the Hyper-V emulation behind it (what a PowerShell script does on a host)."""

from __future__ import annotations

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
