"""Authentication and message encryption of the fake WinRM endpoint.

* Basic: checked on every request against the server's users (constant-time compare).
* NTLM, offered as ``WWW-Authenticate: Negotiate`` as Windows does, accepted with pyspnego.
  NTLM authenticates the TCP connection: the acceptor and its session keys live with the
  connection. pyspnego's NTLM acceptor reads its users only from the file named by the
  environment variable ``NTLM_USER_FILE`` (its ``credentials=`` argument is for Kerberos on
  Windows only), so :class:`NtlmUsers` writes the users' NT hashes (never the passwords) to a
  private file and sets the variable only while pyspnego runs an acceptor step, under a
  process-wide lock, restoring the previous value at once.
* Message encryption (MS-WSMV 2.2.9.1.1): ``multipart/encrypted;
  protocol="application/HTTP-SPNEGO-session-encrypted"`` bodies, each part a 4-byte
  little-endian signature length, the NTLM signature, then the sealed SOAP message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import re
import struct
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import spnego
from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

__all__ = [
    "ENCRYPTED_CONTENT_TYPE",
    "PROTOCOL",
    "ConnectionAuth",
    "EncryptionError",
    "NtlmUsers",
    "check_basic",
    "decrypt_body",
    "encrypt_body",
    "parse_authorization",
]

PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL}";boundary="Encrypted Boundary"'
_BOUNDARY = b"--Encrypted Boundary"
_LENGTH = re.compile(rb"Length=(\d+)")

# pyspnego reads NTLM_USER_FILE from the environment: one acceptor step at a time sets it.
_ENV_LOCK = threading.Lock()


class EncryptionError(ValueError):
    """An encrypted body that does not parse or does not verify."""


def parse_authorization(value: str | None) -> tuple[str, str] | None:
    """``(scheme lower-cased, credentials)`` of an ``Authorization`` header."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), rest.strip()


def check_basic(credentials: str, users: Mapping[str, str]) -> str | None:
    """The user name when Basic ``credentials`` match one of ``users``, else None."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    for name, expected in users.items():
        if _same_user(name, user) and hmac.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        ):
            return name
    return None


def _same_user(configured: str, given: str) -> bool:
    def bare(name: str) -> str:
        return name.rpartition("\\")[2].partition("@")[0].lower()

    return configured.lower() == given.lower() or bare(configured) == bare(given)


class NtlmUsers:
    """The users an NTLM acceptor knows, as a private smbpasswd-style file of hashes."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._dir = tempfile.mkdtemp(prefix="vmmove-winrm-ntlm-")
        self.path = os.path.join(self._dir, "users")
        lines = []
        for name, password in users.items():
            if ":" in name or "\n" in name:
                raise ValueError("an NTLM user name cannot hold ':' or a line break")
            lm = lmowfv1(password).hex().upper()
            nt = ntowfv1(password).hex().upper()
            lines.append(f"{name}:0:{lm}:{nt}:[U]:LCT-00000000")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def __repr__(self) -> str:
        return "NtlmUsers(<hidden>)"

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        with _ENV_LOCK:
            before = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = self.path
            try:
                yield
            finally:
                if before is None:
                    del os.environ["NTLM_USER_FILE"]
                else:
                    os.environ["NTLM_USER_FILE"] = before

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


@dataclass
class ConnectionAuth:
    """What one TCP connection has proven: its user, and the NTLM context that seals it."""

    user: str | None = None
    scheme: str | None = None
    context: spnego.ContextProxy | None = field(default=None, repr=False)
    pending: spnego.ContextProxy | None = field(default=None, repr=False)

    def ntlm_step(self, users: NtlmUsers, token: bytes) -> tuple[bool, bytes | None]:
        """One leg of NTLM: ``(complete, token to send back)``. Raises on a refused login."""
        with users.environment():
            if self.pending is None:
                protocol = "ntlm" if token.startswith(b"NTLMSSP\x00") else "negotiate"
                self.pending = spnego.server(service="http", protocol=protocol)
            ctx = self.pending
            try:
                out = ctx.step(token)
            except Exception:
                self.pending = None
                raise
        if not ctx.complete:
            return False, out
        self.pending = None
        self.context = ctx
        self.user = ctx.client_principal
        self.scheme = "ntlm"
        return True, out

    def reset(self) -> None:
        self.user = self.scheme = None
        self.context = self.pending = None


def decrypt_body(context: spnego.ContextProxy, body: bytes) -> bytes:
    """The SOAP message in a ``multipart/encrypted`` body; :class:`EncryptionError` if bad."""
    parts = [p for p in body.split(_BOUNDARY + b"\r\n") if p]
    if not parts or len(parts) % 2:
        raise EncryptionError("an encrypted body has a header and a payload part per message")
    out = b""
    for i in range(0, len(parts), 2):
        header, payload = parts[i], parts[i + 1]
        if PROTOCOL.encode() not in header:
            raise EncryptionError("unknown encryption protocol")
        m = _LENGTH.search(header)
        if m is None:
            raise EncryptionError("the OriginalContent has no Length")
        payload = payload.removesuffix(_BOUNDARY + b"--\r\n")
        prefix = b"\tContent-Type: application/octet-stream\r\n"
        if not payload.startswith(prefix):
            raise EncryptionError("the payload is not application/octet-stream")
        payload = payload[len(prefix) :]
        if len(payload) < 4:
            raise EncryptionError("the payload is too short")
        (sig_len,) = struct.unpack("<i", payload[:4])
        if sig_len <= 0 or len(payload) < 4 + sig_len:
            raise EncryptionError("bad signature length")
        signature, sealed = payload[4 : 4 + sig_len], payload[4 + sig_len :]
        try:
            message = context.unwrap_winrm(signature, sealed)
        except Exception as exc:
            raise EncryptionError(f"the message does not verify ({type(exc).__name__})") from None
        if len(message) != int(m.group(1)):
            raise EncryptionError("the decrypted length differs from OriginalContent's")
        out += message
    return out


def encrypt_body(context: spnego.ContextProxy, message: bytes) -> bytes:
    """A ``multipart/encrypted`` body carrying ``message`` sealed with ``context``."""
    wrapped = context.wrap_winrm(message)
    return (
        _BOUNDARY + b"\r\n"
        b"\tContent-Type: " + PROTOCOL.encode() + b"\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
        + str(len(message)).encode()
        + b"\r\n"
        + _BOUNDARY
        + b"\r\n\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<i", len(wrapped.header))
        + wrapped.header
        + wrapped.data
        + _BOUNDARY
        + b"--\r\n"
    )
