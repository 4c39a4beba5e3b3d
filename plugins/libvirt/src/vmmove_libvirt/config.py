"""What a libvirt estate is: a named cluster of libvirt host URIs, and the backend's options.

Two URI forms, plus the options declared in :data:`OPTIONS` (parsed by the core from
``vmmove.connect(..., **options)``, the URI's query or the config file's ``[options]``):

``qemu+tcp://10.0.0.1,10.0.0.2/system``
    One transport, several hosts: each comma-separated authority is a host, and every host
    gets the same transport, path and query (``qemu+tcp://10.0.0.1/system``, ...). A user
    given on the first host applies to the others that name none. One host is a cluster of one.

``libvirt://NAME`` with ``hosts="URI URI ..."``
    A named cluster of any libvirt URIs (``qemu+ssh://...``, ``qemu+unix:///system?socket=...``).

The query keys of libvirt's own URIs (``socket``, ``keyfile``, ``pkipath``, ``no_verify``...,
:data:`PASSTHROUGH`) are libvirt's: they stay in the host URIs. vmmove's options given in a
URI's query are taken out of the URIs libvirt opens.

TLS is libvirt's own (``qemu+tls://``, and plain ``qemu://host/`` whose default transport is
TLS), and libvirt verifies the server's certificate unless the URI says ``no_verify=1``; vmmove
refuses that switch unless ``insecure=True`` says it is meant. ``pkipath`` and ``no_verify``
are the client's settings: the URI a source daemon opens to reach its peer (peer-to-peer
migration) goes without them, so the daemon checks its peer with its own PKI.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from vmmove import options as core_options
from vmmove.errors import InsecureConnectionWarning, InvalidInput
from vmmove.options import Option
from vmmove.secrets import Secret

log = logging.getLogger("vmmove.libvirt")

__all__ = [
    "OPTIONS",
    "PASSTHROUGH",
    "ClusterConfig",
    "build",
    "client_uri",
    "migration_address",
    "migration_uri",
    "parse",
    "peer_uri",
    "redact",
]

OPTIONS: tuple[Option, ...] = (
    Option(
        name="hosts",
        kind="list",
        separator=" ",
        doc="more host URIs (as text: separated by spaces, or by commas before a scheme): "
        '`"qemu+ssh://kvm1/system qemu+ssh://kvm2/system"`',
    ),
    Option(name="cluster", kind="str", doc="the cluster's name (default: `libvirt://NAME`'s)"),
    Option(
        name="password",
        kind="secret",
        in_uri=False,
        doc="answer to libvirt's SASL/password prompt (a `vmmove.Secret`)",
    ),
    Option(
        name="copy_storage",
        kind="choice",
        choices=("none", "all", "inc"),
        default="none",
        doc="local disks of a live migration: `none` refuses the VM, `all` copies them "
        "(NON_SHARED_DISK), `inc` copies the top of a backing chain (NON_SHARED_INC)",
    ),
    Option(
        name="shared_paths",
        kind="list",
        doc="absolute directories every host mounts (NFS...): a disk under one of them is shared",
    ),
    Option(
        name="tls_dir",
        kind="path",
        doc="the client's PKI directory for TLS transports (`cacert.pem`, `clientcert.pem`, "
        "`clientkey.pem`); absolute",
    ),
    Option(
        name="insecure",
        kind="bool",
        default=False,
        doc="skip the server certificate check of TLS transports (warned; needed for a "
        "URI's `no_verify=1`)",
    ),
    Option(
        name="migration_address",
        kind="map",
        doc="per host, the address the migration stream goes to: `kvm1=10.1.0.1,kvm2=10.1.0.2` "
        "(key: the host's name or its URI; an IP address or a name, without scheme or port)",
    ),
    Option(
        name="persist_transient",
        kind="bool",
        default=False,
        doc="define a transient domain on the target too (otherwise it stays transient)",
    ),
)
#: Query keys of libvirt's own remote URIs (libvirt's docs, "Remote URI parameters"): the
#: platform's, passed to libvirt as they are.
PASSTHROUGH = (
    "name",
    "command",
    "socket",
    "auth",
    "netcat",
    "keyfile",
    "no_verify",
    "no_tty",
    "pkipath",
    "known_hosts",
    "known_hosts_verify",
    "sshauth",
    "tls_priority",
    "mode",
    "proxy",
)
#: What libvirt's client reads from ``pkipath`` (server side: servercert/serverkey).
TLS_FILES = ("cacert.pem", "clientcert.pem", "clientkey.pem")
#: Query parameters that configure the client end only.
_CLIENT_PARAMS = ("pkipath", "no_verify")
CopyStorage = Literal["none", "all", "inc"]


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    name: str
    uris: tuple[str, ...]
    password: Secret | None = None
    copy_storage: CopyStorage = "none"
    shared_paths: tuple[str, ...] = ()
    tls_dir: str | None = None
    insecure: bool = False
    #: host name or host URI -> migration address (bare: "10.1.0.2", "kvm2-mig", "fd00::2")
    migration_addresses: Mapping[str, str] = field(default_factory=dict)
    persist_transient: bool = False


def uses_tls(uri: str) -> bool:
    """Whether libvirt reaches ``uri`` over TLS: ``qemu+tls``, or ``qemu`` with a host."""
    parts = urlsplit(uri)
    return parts.scheme == "qemu+tls" or (parts.scheme == "qemu" and bool(parts.netloc))


def _with_query(uri: str, edit: dict[str, str | None]) -> str:
    parts = urlsplit(uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in edit]
    query += [(k, v) for k, v in edit.items() if v is not None]
    # libvirt reads pkipath raw: keep the slashes unescaped.
    return parts._replace(query=urlencode(query, safe="/")).geturl()


def client_uri(uri: str, config: ClusterConfig) -> str:
    """The URI this client opens: a TLS URI gets the configured ``pkipath`` and, only when
    ``insecure`` is set, ``no_verify=1``."""
    if not uses_tls(uri):
        return uri
    edit: dict[str, str | None] = {}
    if config.tls_dir is not None:
        edit["pkipath"] = config.tls_dir
    if config.insecure:
        edit["no_verify"] = "1"
    return _with_query(uri, edit) if edit else uri


def peer_uri(uri: str) -> str:
    """The URI a source daemon opens to reach this host: without the client's own settings."""
    query = dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))
    if not any(k in query for k in _CLIENT_PARAMS):
        return uri
    return _with_query(uri, dict.fromkeys(_CLIENT_PARAMS))


def _no_verify(uri: str) -> bool:
    query = dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))
    return query.get("no_verify", "0") not in ("", "0")


def redact(uri: str) -> str:
    """The URI without a password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def migration_address(uri: str) -> str | None:
    """The network address in a host URI (bare, IPv6 without brackets), or ``None`` for a
    URI that names none (a local socket: ``qemu:///system``, ``qemu+unix://...``).

    It is only a candidate for the migration stream: an ssh alias is a name only ssh knows.
    """
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    return host or None


def _is_qemu(scheme: str) -> bool:
    return scheme == "qemu" or scheme.startswith("qemu+")


def _split_hosts(uri: str, parts: SplitResult) -> list[str]:
    """``qemu+tcp://a,b:16601/system`` -> one libvirt URI per comma-separated authority."""
    if "," not in parts.netloc:
        return [uri]  # as given: urlunsplit would turn qemu:///system into qemu:/system
    authorities = [a.strip() for a in parts.netloc.split(",")]
    if any(not a for a in authorities):
        raise InvalidInput(f"empty host in {redact(urlunsplit(parts))!r}")
    user = authorities[0].rsplit("@", 1)[0] + "@" if "@" in authorities[0] else ""
    out = []
    for authority in authorities:
        netloc = authority if "@" in authority else user + authority
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")))
    return out


# Between host URIs: whitespace, or a comma that a scheme follows (a comma inside an
# authority, ``qemu+tcp://a,b/system``, is the multi-host form and stays).
_HOST_SEP = re.compile(r"\s+|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _host_list(items: Sequence[str]) -> list[str]:
    out = []
    # Joined first: "a/system, qemu+ssh://c/system" split on spaces leaves a comma behind.
    for item in filter(None, _HOST_SEP.split(" ".join(items).strip())):
        parts = urlsplit(item)
        if not _is_qemu(parts.scheme):
            raise InvalidInput(
                f"hosts: {redact(item)!r} is not a QEMU driver URI (qemu://, qemu+ssh://, ...)"
            )
        bare = _without_options(item)
        out.extend(_split_hosts(bare, urlsplit(bare)))
    if not out:
        raise InvalidInput("hosts names no host URI")
    return out


def _without_options(uri: str) -> str:
    """The URI libvirt opens: vmmove's own options taken out of its query."""
    query = dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))
    ours = [o.name for o in OPTIONS if o.name in query]
    return _with_query(uri, dict.fromkeys(ours)) if ours else uri


def parse(uri: str, options: Mapping[str, Any]) -> ClusterConfig:
    """The cluster behind ``uri`` and raw ``options``, parsed as ``vmmove.connect`` parses
    them (the core's :func:`vmmove.options.parse`, then :func:`build`)."""
    values = core_options.parse(
        OPTIONS, uri=uri, kwargs=options, scheme="qemu", passthrough=PASSTHROUGH
    )
    return build(uri, values)


def build(uri: str, options: Mapping[str, Any]) -> ClusterConfig:
    """The cluster behind ``uri`` and the parsed option values (each of its declared kind);
    :class:`InvalidInput` for what the kinds alone do not catch."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise InvalidInput(f"malformed URI: {exc}") from None
    name = options.get("cluster")
    uris: list[str] = []
    if parts.scheme == "libvirt":
        query = core_options.query_of(uri)
        if parts.path not in ("", "/") or set(query) - {o.name for o in OPTIONS}:
            raise InvalidInput("a libvirt:// URI names a cluster only: libvirt://NAME")
        name = name or parts.netloc or None
        if "hosts" not in options:
            raise InvalidInput(
                "libvirt://NAME needs its hosts: connect(uri, hosts='qemu+ssh://kvm1/system "
                'qemu+ssh://kvm2/system\'), or hosts = "..." under [options] in the config file'
            )
    elif _is_qemu(parts.scheme):
        bare = _without_options(uri)
        uris.extend(_split_hosts(bare, urlsplit(bare)))
    else:
        raise InvalidInput(f"not a libvirt URI: {redact(uri)!r}")
    if "hosts" in options:
        uris.extend(_host_list(options["hosts"]))
    if not uris:
        raise InvalidInput("a libvirt cluster needs at least one host URI")
    if len(set(uris)) != len(uris):
        raise InvalidInput("a host URI is listed twice")
    if name is None:
        name = "default"
    if not name:
        raise InvalidInput("cluster must be a non-empty string")

    shared = list(options.get("shared_paths", ()))
    for path in shared:
        if not path.startswith("/"):
            raise InvalidInput(f"shared_paths: {path!r} is not an absolute directory")

    tls_dir, insecure = _tls(uris, options)
    return ClusterConfig(
        name=name,
        uris=tuple(uris),
        password=options.get("password"),
        copy_storage=options.get("copy_storage", "none"),
        shared_paths=tuple(p.rstrip("/") or "/" for p in shared),
        tls_dir=tls_dir,
        insecure=insecure,
        migration_addresses=_migration_addresses(options.get("migration_address", {})),
        persist_transient=bool(options.get("persist_transient", False)),
    )


def _migration_addresses(given: Mapping[str, str]) -> dict[str, str]:
    """``{host: address}`` checked as addresses; which hosts the keys name is checked once
    the hosts answered (a key may be a host URI)."""
    out = {}
    for key, address in given.items():
        bare = address.strip()
        if bare.startswith("[") and bare.endswith("]"):
            bare = bare[1:-1]
        if not key or not bare or any(c.isspace() or c in "/@?#[]" for c in bare):
            raise InvalidInput(
                f"migration_address for {key!r}: {address!r} is not a host name or IP address "
                "(give the address alone, no scheme or port: 'kvm1=10.1.0.1,kvm2=10.1.0.2')"
            )
        out[key] = bare
    return out


def migration_uri(address: str) -> str:
    """libvirt's ``migrate_uri`` for a bare address (IPv6 in brackets)."""
    return f"tcp://[{address}]" if ":" in address else f"tcp://{address}"


def _tls(uris: Sequence[str], options: Mapping[str, Any]) -> tuple[str | None, bool]:
    """Check the TLS options against the URIs; warn once when verification is switched off."""
    insecure = bool(options.get("insecure", False))
    tls = [u for u in uris if uses_tls(u)]
    unverified = [u for u in tls if _no_verify(u)]
    if unverified and not insecure:
        raise InvalidInput(
            f"{redact(unverified[0])!r} turns off TLS certificate checks (no_verify); "
            "pass insecure=True if that is really meant, or trust the server's CA with tls_dir"
        )
    if insecure and not tls:
        raise InvalidInput("insecure applies to TLS transports only (qemu+tls://, qemu://host/)")
    tls_path = options.get("tls_dir")
    tls_dir = None if tls_path is None else os.fspath(tls_path)
    if tls_dir is not None:
        if not tls_dir.startswith("/"):
            raise InvalidInput(f"tls_dir must be an absolute directory, not {tls_dir!r}")
        if not tls:
            raise InvalidInput("tls_dir applies to TLS transports only (qemu+tls://, qemu://host/)")
        missing = [f for f in TLS_FILES if not os.path.isfile(os.path.join(tls_dir, f))]
        if missing:
            raise InvalidInput(f"tls_dir {tls_dir!r} lacks {', '.join(missing)}")
        tls_dir = tls_dir.rstrip("/") or "/"
    if insecure:
        message = (
            "TLS certificate verification is OFF for libvirt hosts "
            f"{', '.join(redact(u) for u in tls)} (insecure=True): anyone on the path can pose "
            "as the host; trust its CA with tls_dir instead"
        )
        warnings.warn(message, InsecureConnectionWarning, stacklevel=7)
        log.warning("%s", message)
    return tls_dir, insecure
