"""What ``hyperv://`` accepts, declared as data: the core parses keyword arguments, URI query
and config file against it, and docs/backends/hyperv.md's options table is written from it.
Importable without ``winrm`` (for ``vmmove backends`` and the CLI)."""

from __future__ import annotations

from vmmove.options import Option

__all__ = ["OPTIONS"]

OPTIONS: tuple[Option, ...] = (
    Option(
        name="transport",
        kind="choice",
        choices=("ntlm", "kerberos", "credssp", "ssl", "basic"),
        default="ntlm",
        doc="WinRM authentication: `ntlm` (messages encrypted over HTTP), `kerberos`, "
        "`credssp`, `ssl` (HTTPS with basic authentication), `basic` (refused over plain "
        "HTTP unless `insecure=true`)",
    ),
    Option(
        name="username",
        kind="str",
        doc="the Windows account (`DOMAIN\\user` or `user@domain`); overrides the URI's user",
    ),
    Option(
        name="password",
        kind="secret",
        in_uri=False,
        doc="the account's password; the CLI's `$VMMOVE_PASSWORD` and `--ask-password` supply it",
    ),
    Option(
        name="port",
        kind="int",
        doc="WinRM port of every host without one in the URI (default 5985, 5986 with TLS)",
    ),
    Option(
        name="https",
        kind="bool",
        default=False,
        doc="`true`: WinRM over HTTPS for `ntlm`, `kerberos` and `credssp` too",
    ),
    Option(
        name="ca_trust_path",
        kind="path",
        doc="CA bundle that verifies the hosts' certificates (default: the system's)",
    ),
    Option(
        name="insecure",
        kind="bool",
        default=False,
        doc="`true`: skip the TLS certificate check, or allow `basic` over plain HTTP "
        "(warned with `vmmove.InsecureConnectionWarning`)",
    ),
    Option(
        name="shell",
        kind="choice",
        choices=("powershell", "pwsh"),
        default="powershell",
        doc="the PowerShell that runs each script: Windows PowerShell 5.1 or PowerShell 7",
    ),
    Option(
        name="operation_timeout",
        kind="duration",
        default=20.0,
        doc="WS-Management operation timeout: how long one Receive waits for output",
    ),
    Option(
        name="call_timeout",
        kind="duration",
        default=60.0,
        doc="wall-clock limit of one PowerShell call (a hung command ends in "
        "`ConnectionFailed` naming the host and the command)",
    ),
    Option(
        name="poll_interval",
        kind="duration",
        default=2.0,
        doc="time between two reads of the migration jobs (one call per source host)",
    ),
    Option(
        name="performance",
        kind="choice",
        choices=("host", "tcpip", "compression", "smb"),
        default="host",
        doc="live migration transport: `host` keeps the host's setting; `tcpip` and "
        "`compression` are set per migration; `smb` needs the source host set to SMB "
        "(`Set-VMHost -VirtualMachineMigrationPerformanceOption SMB`)",
    ),
    Option(
        name="smb_bandwidth",
        kind="size",
        doc="with `performance=smb`: `Set-SmbBandwidthLimit -Category LiveMigration` on the "
        "source host before each migration (a host-wide setting that stays)",
    ),
    Option(
        name="cluster",
        kind="str",
        default="",
        doc="a name for the hosts' cluster, shown with each host (the URI's path also sets it)",
    ),
)
