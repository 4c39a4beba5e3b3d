"""What ``nutanix://`` accepts, declared as data: the core parses keyword arguments, the URI
query and the config file against it and refuses anything else; docs/backends/nutanix.md's
options table is written from it. Importable without ``requests``."""

from __future__ import annotations

from vmmove.options import Option

__all__ = ["OPTIONS"]

OPTIONS: tuple[Option, ...] = (
    Option(
        name="user",
        kind="str",
        default="admin",
        doc="the Prism user for HTTP Basic (a user in the URI, `nutanix://USER@HOST`, wins)",
    ),
    Option(
        name="password",
        kind="secret",
        in_uri=False,
        doc="the Prism user's password; the CLI's `$VMMOVE_PASSWORD`, `--ask-password` or "
        "the config file supply it",
    ),
    Option(
        name="ca_file",
        kind="path",
        doc="PEM file of the CA that signed Prism's certificate; it wins over "
        "`$REQUESTS_CA_BUNDLE` (default: the system's trust store)",
    ),
    Option(
        name="insecure",
        kind="bool",
        default=False,
        doc="`true`: skip the TLS certificate check (warned with "
        "`vmmove.InsecureConnectionWarning` and logged)",
    ),
    Option(
        name="timeout",
        kind="duration",
        default=15.0,
        doc="how long one API call may take",
    ),
    Option(
        name="poll_interval",
        kind="duration",
        default=1.0,
        doc="time between the engine's polls of a Prism task",
    ),
    Option(
        name="page_size",
        kind="int",
        default=100,
        doc="entities per page when listing (v4 `$limit`, v2 `count`; Prism allows 1 to 100 on v4)",
    ),
    Option(
        name="clock_skew",
        kind="duration",
        default=60.0,
        doc="how far Prism's clock may be from this machine's, when a lost answer to a v2 "
        "migrate is looked for among the VM's recent tasks",
    ),
)
