"""``vsphere://`` URIs and connection options, checked before anything touches the network.

``vsphere://user@vcenter.example[:port]/Datacenter`` names the vCenter (or ESXi host), the
user and, optionally, the inventory path of one datacenter that scopes every inventory call.
Non-secret options may also be given as query parameters
(``vsphere://user@vc/DC0?ca_file=/etc/ssl/vc.pem``). The password never travels in the URI:
it comes from the ``password`` option (a :class:`vmmove.Secret`, as the CLI and the config
file pass it) or from ``$VMMOVE_PASSWORD``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from vmmove.errors import InvalidInput
from vmmove.secrets import Secret

__all__ = ["PRIORITIES", "Settings", "parse"]

DEFAULT_PORT = 443
#: ``RelocateVM_Task`` priorities (``vim.VirtualMachine.MovePriority``), by their short names.
PRIORITIES = {
    "default": "defaultPriority",
    "high": "highPriority",
    "low": "lowPriority",
}
_QUERY_KEYS = frozenset(
    {"ca_file", "thumbprint", "insecure", "timeout", "check_timeout", "poll_interval", "priority"}
)
_OPTION_KEYS = _QUERY_KEYS | {"password", "username", "datastore"}
_THUMBPRINT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$|^[0-9a-f]{128}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"vsphere:// option {name} must be true or false, not {value!r}")


def _seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or isinstance(value, bool):
        raise InvalidInput(f"vsphere:// option {name} must be a positive number of seconds")
    return seconds


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


def parse(uri: str, options: Mapping[str, Any]) -> Settings:
    """Check ``uri`` and ``options``; raise :class:`InvalidInput` (never naming a secret)."""
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

    query: dict[str, str] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key not in _QUERY_KEYS:
            known = ", ".join(sorted(_QUERY_KEYS))
            raise InvalidInput(f"unknown vsphere:// URI parameter {key!r} (known: {known})")
        query[key] = values[-1]
    unknown = set(options) - _OPTION_KEYS
    if unknown:
        known = ", ".join(sorted(_OPTION_KEYS))
        raise InvalidInput(
            f"unknown vsphere:// option(s) {', '.join(sorted(unknown))} (known: {known})"
        )
    merged: dict[str, Any] = {**query, **{k: v for k, v in options.items() if v is not None}}

    username = merged.pop("username", None) or unquote(parts.username or "")
    if not username:
        raise InvalidInput("a vsphere:// URI names the user: vsphere://user@vcenter/Datacenter")
    raw_password = merged.pop("password", None)
    if raw_password is None:
        raw_password = os.environ.get("VMMOVE_PASSWORD")
    if raw_password is None:
        raise InvalidInput(
            f"no password for {username}: pass password=vmmove.Secret(...), "
            "or set VMMOVE_PASSWORD or the config file's password"
        )
    if not isinstance(raw_password, str | Secret):
        raise InvalidInput("the vsphere:// password must be a string or a vmmove.Secret")
    password = raw_password if isinstance(raw_password, Secret) else Secret(raw_password)

    ca_file = merged.pop("ca_file", None)
    if ca_file is not None:
        ca_file = os.fspath(ca_file)
        if not os.path.isfile(ca_file):
            raise InvalidInput(f"vsphere:// ca_file {ca_file!r} is not a readable file")
    thumbprint = merged.pop("thumbprint", None)
    if thumbprint is not None:
        thumbprint = normalize_thumbprint(thumbprint)
    insecure = _flag("insecure", merged.pop("insecure", False))
    if insecure and (ca_file or thumbprint):
        raise InvalidInput("vsphere:// insecure=true contradicts ca_file/thumbprint: choose one")

    priority_name = str(merged.pop("priority", "default"))
    priority = PRIORITIES.get(priority_name.removesuffix("Priority").lower())
    if priority is None:
        raise InvalidInput(
            f"vsphere:// priority must be one of {', '.join(PRIORITIES)}, not {priority_name!r}"
        )
    datastore = merged.pop("datastore", None)
    if datastore is not None and (not isinstance(datastore, str) or not datastore):
        raise InvalidInput("vsphere:// datastore must be a datastore name or id")

    seconds = {
        key: _seconds(key, merged.pop(key))
        for key in ("timeout", "check_timeout", "poll_interval")
        if key in merged
    }
    return Settings(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        username=username,
        password=password,
        datacenter=unquote(parts.path).strip("/"),
        ca_file=ca_file,
        thumbprint=thumbprint,
        insecure=insecure,
        priority=priority,
        datastore=datastore,
        **seconds,
    )
