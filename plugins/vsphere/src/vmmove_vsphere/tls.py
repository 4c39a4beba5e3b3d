"""TLS for the SOAP connection: verified by default, pinned by thumbprint, insecure on request.

Every connection gets an ``ssl.SSLContext`` built here and passed explicitly: pyVim would
otherwise switch verification off by itself for ``localhost``/``127.0.0.1``. Thumbprint
pinning is done by this module's context on *every* connection: pyVmomi's own ``thumbprint``
argument turns verification off in the shared context after the first mismatch of the
chain, so later pooled connections would not be checked.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import warnings
from typing import Any

from vmmove.errors import InsecureConnectionWarning
from vmmove_vsphere.options import Settings

__all__ = ["InsecureConnectionWarning", "PinnedContext", "ThumbprintMismatch", "ssl_context"]

log = logging.getLogger("vmmove.vsphere")

_DIGESTS = {40: "sha1", 64: "sha256", 128: "sha512"}


class ThumbprintMismatch(ssl.SSLCertVerificationError):
    """The server's certificate does not have the pinned thumbprint. ``str()`` is the
    sentence itself (an ``SSLError``'s own ``str()`` shows its args as a tuple)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PinnedContext(ssl.SSLContext):
    """A client context that accepts exactly the certificate with the pinned thumbprint
    (checked after each handshake), on top of whatever chain verification it is set to do."""

    pin: str = ""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True) or b""
        actual = hashlib.new(_DIGESTS[len(self.pin)], der).hexdigest()
        if not hmac.compare_digest(actual, self.pin):
            sock.close()
            digest = _DIGESTS[len(self.pin)].upper().replace("SHA", "SHA-")
            raise ThumbprintMismatch(
                f"certificate thumbprint mismatch: the server's certificate has the {digest} "
                f"thumbprint {actual}, not the pinned {self.pin}; if the server's certificate "
                "was replaced on purpose, pin the new thumbprint"
            )
        return sock


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The context for ``settings``: system CAs (or ``ca_file``) with hostname checks by
    default; a thumbprint pin; or no verification at all when ``insecure`` is set (warned)."""
    if settings.insecure:
        message = (
            f"TLS certificate verification is OFF for {settings.display()} (insecure=True): "
            "anyone on the path can read the credentials; pin the certificate with "
            "thumbprint= or trust its CA with ca_file= instead"
        )
        warnings.warn(message, InsecureConnectionWarning, stacklevel=4)
        log.warning("%s", message)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if settings.thumbprint:
        pinned = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
        pinned.pin = settings.thumbprint
        if settings.ca_file:
            pinned.load_verify_locations(cafile=settings.ca_file)
            pinned.check_hostname = True
            pinned.verify_mode = ssl.CERT_REQUIRED
        else:  # the pin is the identity: a self-signed certificate needs no CA
            pinned.check_hostname = False
            pinned.verify_mode = ssl.CERT_NONE
        return pinned
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def describe_tls_error(exc: BaseException) -> str:
    """A short reason for a failed handshake, e.g. ``certificate verify failed: self-signed
    certificate in certificate chain``."""
    if isinstance(exc, ThumbprintMismatch):
        return exc.message
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"certificate verify failed: {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return str(exc)
