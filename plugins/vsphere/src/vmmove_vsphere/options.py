"""``vsphere://`` URIs and connection options, checked before anything touches the network.

``vsphere://user@vcenter.example[:port]/Datacenter`` names the vCenter (or ESXi host), the
user and, optionally, the inventory path of one datacenter that scopes every inventory call.
The options are declared as data (:data:`OPTIONS`); the core parses them (URI query, keyword
arguments, config file) and refuses unknown ones, the same way for every backend. What is
left here is what only vSphere knows: the URI itself, the password's fallback to
``$VMMOVE_PASSWORD``, thumbprint forms, and options that contradict each other. The
password never travels in the URI.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from vmmove.errors import InvalidInput
from vmmove.options import Option
from vmmove.secrets import Secret

__all__ = ["OPTIONS", "PRIORITIES", "Settings", "settings"]

DEFAULT_PORT = 443
#: ``RelocateVM_Task`` priorities (``vim.VirtualMachine.MovePriority``), by their short names.
PRIORITIES = {
    "default": "defaultPriority",
    "high": "highPriority",
    "low": "lowPriority",
}
_THUMBPRINT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$|^[0-9a-f]{128}$")

#: Every option ``vsphere://`` accepts; the docs page's options table is made from this.
OPTIONS: tuple[Option, ...] = (
    Option(
        name="password",
        kind="secret",
        in_uri=False,
        doc="the user's password; without it, `$VMMOVE_PASSWORD`",
    ),
    Option(name="username", kind="str", doc="overrides the URI's user"),
    Option(
        name="ca_file",
        kind="path",
        doc="PEM file of the CA(s) to trust instead of the system's",
    ),
    Option(
        name="thumbprint",
        kind="str",
        doc="pin the server certificate: its SHA-1, SHA-256 or SHA-512 hex digest (colons "
        "allowed). Alone, it replaces chain verification (a self-signed vCenter); with "
        "`ca_file`, both must hold",
    ),
    Option(
        name="insecure",
        kind="bool",
        default=False,
        doc="no certificate verification at all. Warns (`InsecureConnectionWarning` and a log "
        "line) on every connect; refused together with `ca_file`/`thumbprint`",
    ),
    Option(
        name="timeout",
        kind="duration",
        default=60.0,
        doc="for one SOAP request, and for reaching the port (more than 0)",
    ),
    Option(
        name="check_timeout",
        kind="duration",
        default=60.0,
        doc="what the pre-check tasks may take before they count as a warning (more than 0)",
    ),
    Option(
        name="poll_interval",
        kind="duration",
        default=0.5,
        doc="between polls of a running task (more than 0)",
    ),
    Option(
        name="priority",
        kind="choice",
        choices=tuple(PRIORITIES),
        default="default",
        doc="`RelocateVM_Task` priority",
    ),
    Option(
        name="datastore",
        kind="str",
        doc="default target datastore (name or id) for every move: a storage move with each "
        "migration",
    ),
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything needed to reach one vCenter. ``password`` is a :class:`Secret`: it shows
    itself nowhere, and :meth:`display` is what messages and logs print."""

    host: str
    port: int = DEFAULT_PORT
    username: str
    password: Secret
    datacenter: str = ""  # inventory path ("DC0", "Folder/DC0"); "" = every datacenter
    ca_file: str | None = None
    thumbprint: str | None = None  # lower-case hex SHA-1/SHA-256/SHA-512, no colons
    insecure: bool = False
    timeout: float = 60.0  # seconds for one SOAP request
    check_timeout: float = 60.0  # seconds the pre-check tasks may take
    poll_interval: float = 0.5
    priority: str = "defaultPriority"
    datastore: str | None = None  # default target datastore (name or id) for storage moves

    def display(self) -> str:
        """``vsphere://user@host:port/DC``: what messages name; never the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORT else f":{self.port}"
        path = f"/{self.datacenter}" if self.datacenter else ""
        return f"vsphere://{self.username}@{host}{port}{path}"


def normalize_thumbprint(value: Any) -> str:
    """``AB:CD:...`` or ``abcd...`` (SHA-1, SHA-256 or SHA-512 of the DER certificate) ->
    lower-case hex without separators."""
    text = str(value).replace(":", "").replace(" ", "").strip().lower()
    if not _THUMBPRINT.match(text):
        raise InvalidInput(
            "vsphere:// thumbprint must be the SHA-1, SHA-256 or SHA-512 hex digest of the "
            "server certificate (colons allowed)"
        )
    return text


def settings(uri: str, options: Mapping[str, Any]) -> Settings:
    """Check ``uri`` and the options as the core parsed them (:data:`OPTIONS`: every value
    already of its kind); raise :class:`InvalidInput` (never naming a secret)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"malformed vsphere:// URI: {exc}") from None
    if parts.scheme != "vsphere":
        raise InvalidInput(f"not a vsphere:// URI: scheme {parts.scheme!r}")
    if parts.password is not None:
        raise InvalidInput(
            "a vsphere:// URI must not hold the password: pass password=vmmove.Secret(...), "
            "or set VMMOVE_PASSWORD or the config file's password"
        )
    if not parts.hostname:
        raise InvalidInput("a vsphere:// URI names the vCenter: vsphere://user@vcenter/Datacenter")
    if parts.fragment:
        raise InvalidInput("a vsphere:// URI has no #fragment")

    username = options.get("username") or unquote(parts.username or "")
    if not username:
        raise InvalidInput("a vsphere:// URI names the user: vsphere://user@vcenter/Datacenter")
    password = options.get("password")
    if password is None and (env := os.environ.get("VMMOVE_PASSWORD")) is not None:
        password = Secret(env)
    if password is None:
        raise InvalidInput(
            f"no password for {username}: pass password=vmmove.Secret(...), "
            "or set VMMOVE_PASSWORD or the config file's password"
        )

    ca_file = options.get("ca_file")
    if ca_file is not None:
        ca_file = os.fspath(ca_file)
        if not os.path.isfile(ca_file):
            raise InvalidInput(f"vsphere:// ca_file {ca_file!r} is not a readable file")
    thumbprint = options.get("thumbprint")
    if thumbprint is not None:
        thumbprint = normalize_thumbprint(thumbprint)
    insecure = bool(options.get("insecure", False))
    if insecure and (ca_file or thumbprint):
        raise InvalidInput("vsphere:// insecure=true contradicts ca_file/thumbprint: choose one")
    datastore = options.get("datastore")
    if datastore == "":
        raise InvalidInput("vsphere:// datastore must be a datastore name or id")
    # A zero timeout or poll interval would never wait at all (the core refuses < 0).
    seconds = {
        k: float(options.get(k, d))
        for k, d in (("timeout", 60.0), ("check_timeout", 60.0), ("poll_interval", 0.5))
    }
    for key, value in seconds.items():
        if value <= 0:
            raise InvalidInput(f"vsphere:// option {key} must be more than 0 s")
    return Settings(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        username=username,
        password=password,
        datacenter=unquote(parts.path).strip("/"),
        ca_file=ca_file,
        thumbprint=thumbprint,
        insecure=insecure,
        priority=PRIORITIES[options.get("priority", "default")],
        datastore=datastore,
        **seconds,
    )
