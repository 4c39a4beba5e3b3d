"""What a libvirt estate is: a named cluster of libvirt host URIs, and the backend's options.

Two URI forms, plus options from ``vmmove.connect(..., **options)`` or the config file's
``[options]`` table:

``qemu+tcp://10.0.0.1,10.0.0.2/system``
    One transport, several hosts: each comma-separated authority is a host, and every host
    gets the same transport, path and query (``qemu+tcp://10.0.0.1/system``, ...). A user
    given on the first host applies to the others that name none. One host is a cluster of one.

``libvirt://NAME`` with ``hosts = [...]``
    A named cluster of any libvirt URIs (``qemu+ssh://...``, ``qemu+unix:///system?socket=...``).

Options: ``hosts`` (more host URIs), ``cluster`` (the cluster's name, default ``default``),
``password`` (a :class:`vmmove.Secret` for libvirt's SASL/password prompt),
``shutdown_timeout`` (seconds a cold migration waits for a graceful shutdown, default 60),
``copy_storage`` (``none``: refuse VMs with local disks; ``all``: copy them, NON_SHARED_DISK;
``inc``: NON_SHARED_INC), ``shared_paths`` (directories every host mounts: a disk under one
is shared), ``tls_dir`` (the client's PKI directory for TLS transports: ``cacert.pem``,
``clientcert.pem``, ``clientkey.pem``), ``insecure`` (skip the server certificate check of TLS
transports; warned), ``migration_address`` (per host, the address the migration stream goes to
when it is not the host of the host's URI: ``{"kvm2": "10.1.0.2"}``, keyed by host name or by
the host's URI), ``persist_transient`` (define a transient domain on the target too; default
false: a transient domain stays transient).

TLS is libvirt's own (``qemu+tls://``, and plain ``qemu://host/`` whose default transport is
TLS), and libvirt verifies the server's certificate unless the URI says ``no_verify=1``; vmmove
refuses that switch unless ``insecure=True`` says it is meant. ``pkipath`` and ``no_verify``
are the client's settings: the URI a source daemon opens to reach its peer (peer-to-peer
migration) goes without them, so the daemon checks its peer with its own PKI.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from vmmove.errors import InsecureConnectionWarning, InvalidInput
from vmmove.secrets import Secret

log = logging.getLogger("vmmove.libvirt")

__all__ = [
    "OPTIONS",
    "ClusterConfig",
    "client_uri",
    "migration_address",
    "migration_uri",
    "parse",
    "peer_uri",
    "redact",
]

OPTIONS = (
    "hosts",
    "cluster",
    "password",
    "shutdown_timeout",
    "copy_storage",
    "shared_paths",
    "tls_dir",
    "insecure",
    "migration_address",
    "persist_transient",
)
#: What libvirt's client reads from ``pkipath`` (server side: servercert/serverkey).
TLS_FILES = ("cacert.pem", "clientcert.pem", "clientkey.pem")
#: Query parameters that configure the client end only.
_CLIENT_PARAMS = ("pkipath", "no_verify")
CopyStorage = Literal["none", "all", "inc"]
_COPY = ("none", "all", "inc")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    name: str
    uris: tuple[str, ...]
    password: Secret | None = None
    shutdown_timeout: float = 60.0
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


def _host_list(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidInput("the hosts option is a list of libvirt URIs")
    out = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise InvalidInput(f"hosts: {item!r} is not a libvirt URI")
        parts = urlsplit(item)
        if not _is_qemu(parts.scheme):
            raise InvalidInput(
                f"hosts: {redact(item)!r} is not a QEMU driver URI (qemu://, qemu+ssh://, ...)"
            )
        out.extend(_split_hosts(item, parts))
    return out


def parse(uri: str, options: Mapping[str, Any]) -> ClusterConfig:
    """The cluster behind ``uri`` and ``options``; :class:`InvalidInput` for anything malformed."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown libvirt option(s): {', '.join(unknown)}; known: {', '.join(OPTIONS)}"
        )
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise InvalidInput(f"malformed URI: {exc}") from None
    name = options.get("cluster")
    uris: list[str] = []
    if parts.scheme == "libvirt":
        if parts.path not in ("", "/") or parts.query:
            raise InvalidInput("a libvirt:// URI names a cluster only: libvirt://NAME")
        name = name or parts.netloc or None
        if "hosts" not in options:
            raise InvalidInput(
                "libvirt://NAME needs its hosts: connect(uri, hosts=['qemu+ssh://kvm1/system', "
                "...]), or hosts = [...] under [options] in the config file"
            )
    elif _is_qemu(parts.scheme):
        uris.extend(_split_hosts(uri, parts))
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
    if not isinstance(name, str) or not name:
        raise InvalidInput("cluster must be a non-empty string")

    password = options.get("password")
    if password is not None and not isinstance(password, Secret):
        if not isinstance(password, str):
            raise InvalidInput("password must be a string or a vmmove.Secret")
        password = Secret(password)

    timeout = options.get("shutdown_timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidInput(
            f"shutdown_timeout must be a positive number of seconds, not {timeout!r}"
        )

    copy = options.get("copy_storage", "none")
    if copy not in _COPY:
        raise InvalidInput(f"copy_storage must be one of {', '.join(_COPY)}, not {copy!r}")

    shared = options.get("shared_paths", ())
    if isinstance(shared, str) or not isinstance(shared, Sequence):
        raise InvalidInput("shared_paths is a list of directories")
    for path in shared:
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidInput(f"shared_paths: {path!r} is not an absolute directory")

    persist = options.get("persist_transient", False)
    if not isinstance(persist, bool):
        raise InvalidInput(f"persist_transient must be true or false, not {persist!r}")

    tls_dir, insecure = _tls(uris, options)
    return ClusterConfig(
        name=name,
        uris=tuple(uris),
        password=password,
        shutdown_timeout=float(timeout),
        copy_storage=copy,
        shared_paths=tuple(p.rstrip("/") or "/" for p in shared),
        tls_dir=tls_dir,
        insecure=insecure,
        migration_addresses=_migration_addresses(options.get("migration_address", {})),
        persist_transient=persist,
    )


def _migration_addresses(value: Any) -> dict[str, str]:
    """``{host: address}``; which hosts the keys name is checked once the hosts answered."""
    if not isinstance(value, Mapping):
        raise InvalidInput(
            "migration_address maps hosts to addresses: {'kvm2': '10.1.0.2'} (key: the host's "
            "name or its URI)"
        )
    out = {}
    for key, address in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"migration_address: {key!r} names no host")
        if not isinstance(address, str):
            raise InvalidInput(f"migration_address[{key!r}] must be an address, not {address!r}")
        bare = address.strip()
        if bare.startswith("[") and bare.endswith("]"):
            bare = bare[1:-1]
        if not bare or any(c.isspace() or c in "/@?#[]" for c in bare):
            raise InvalidInput(
                f"migration_address[{key!r}] = {address!r} is not a host name or IP address "
                "(give the address alone, no scheme or port)"
            )
        out[key] = bare
    return out


def migration_uri(address: str) -> str:
    """libvirt's ``migrate_uri`` for a bare address (IPv6 in brackets)."""
    return f"tcp://[{address}]" if ":" in address else f"tcp://{address}"


def _tls(uris: Sequence[str], options: Mapping[str, Any]) -> tuple[str | None, bool]:
    """Check the TLS options against the URIs; warn once when verification is switched off."""
    insecure = options.get("insecure", False)
    if not isinstance(insecure, bool):
        raise InvalidInput(f"insecure must be true or false, not {insecure!r}")
    tls = [u for u in uris if uses_tls(u)]
    unverified = [u for u in tls if _no_verify(u)]
    if unverified and not insecure:
        raise InvalidInput(
            f"{redact(unverified[0])!r} turns off TLS certificate checks (no_verify); "
            "pass insecure=True if that is really meant, or trust the server's CA with tls_dir"
        )
    if insecure and not tls:
        raise InvalidInput("insecure applies to TLS transports only (qemu+tls://, qemu://host/)")
    tls_dir = options.get("tls_dir")
    if tls_dir is not None:
        if not isinstance(tls_dir, str) or not tls_dir.startswith("/"):
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
        warnings.warn(message, InsecureConnectionWarning, stacklevel=5)
        log.warning("%s", message)
    return tls_dir, insecure
