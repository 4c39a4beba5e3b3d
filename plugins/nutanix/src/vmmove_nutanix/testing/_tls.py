"""TLS material for the fake Prism. TEST ONLY: the private key below is public.

A throw-away CA of the fake's own (not shared with any other fake) and a server certificate it
signed, for ``127.0.0.1``, ``::1`` and ``localhost`` (EC P-256, valid for a century).
Clients trust :data:`CA_PEM`; nothing else should. :data:`UNRELATED_CA_PEM` is a second CA
that signed nothing here: tests point ``REQUESTS_CA_BUNDLE`` at it to prove that a configured
CA wins over the environment.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

__all__ = ["CA_PEM", "SERVER_CERT_PEM", "SERVER_KEY_PEM", "UNRELATED_CA_PEM", "server_context"]

CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBfDCCASKgAwIBAgICEAAwCgYIKoZIzj0EAwIwJDEiMCAGA1UEAwwZdm1tb3Zl
LXRlc3RpbmctbnV0YW5peC1jYTAgFw0yNjEyMDcwNzE5NDBaGA8yMTI2MTExMzA3
MTk0MFowJDEiMCAGA1UEAwwZdm1tb3ZlLXRlc3RpbmctbnV0YW5peC1jYTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABOvaaHeqGn1KzkTs7NqNEWY5DQ9QkJ6dQutH
32rYHDx9252F2Oqz1G7dD3NnJ5ObQxlI7s93ZxuOxVTbyWMCASCjQjBAMA8GA1Ud
EwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBTB0TjEs44MMSHS
uitGUgmndN3crjAKBggqhkjOPQQDAgNIADBFAiEAzGOQCJbJqnZsq0qQtO4P1Gnd
ygvcObhGZNDmvIkmZXICIFp5uVvoLuMsOEHcB6hfTKm3llhrpuQacmYvYaUGZlhg
-----END CERTIFICATE-----
"""

SERVER_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIB1jCCAX2gAwIBAgICEAEwCgYIKoZIzj0EAwIwJDEiMCAGA1UEAwwZdm1tb3Zl
LXRlc3RpbmctbnV0YW5peC1jYTAgFw0yNjEyMDcwNzE5NDBaGA8yMTI2MTExMzA3
MTk0MFowHDEaMBgGA1UEAwwRdm1tb3ZlLWZha2UtcHJpc20wWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATwsXS/Zshlqv3I/qsg0tVritJS4uCeLQQkRCmRJuxeJiF5
oRH9HM6LXpmev90bsG3w4OyYIgXU/iQseFWkm2PHo4GkMIGhMAwGA1UdEwEB/wQC
MAAwDgYDVR0PAQH/BAQDAgWgMBMGA1UdJQQMMAoGCCsGAQUFBwMBMCwGA1UdEQQl
MCOHBH8AAAGHEAAAAAAAAAAAAAAAAAAAAAGCCWxvY2FsaG9zdDAfBgNVHSMEGDAW
gBTB0TjEs44MMSHSuitGUgmndN3crjAdBgNVHQ4EFgQUbjAO5yxECAmlHF2wyMXF
FWRGp80wCgYIKoZIzj0EAwIDRwAwRAIgIxHujYpWDi/VAk86o2xjWyTuzaTRZR7s
HHjXKDdCT8UCIGYrUbZ4Sme3a+F3kMFovnFWVMRIPH+qmhaxcdm4PqVE
-----END CERTIFICATE-----
"""

SERVER_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgN7n1LMBX7DS8hrHK
daJuUbhh/5zsGAjMBFMz+Y7+eAWhRANCAATwsXS/Zshlqv3I/qsg0tVritJS4uCe
LQQkRCmRJuxeJiF5oRH9HM6LXpmev90bsG3w4OyYIgXU/iQseFWkm2PH
-----END PRIVATE KEY-----
"""

UNRELATED_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBozCCAUmgAwIBAgIUXRq3CWbNfyXqqUBxznbfKh28+x0wCgYIKoZIzj0EAwIw
JjEkMCIGA1UEAwwbdm1tb3ZlLXRlc3RpbmctdW5yZWxhdGVkLWNhMCAXDTI2MTIw
NzA3MTk0MFoYDzIxMjYxMTEzMDcxOTQwWjAmMSQwIgYDVQQDDBt2bW1vdmUtdGVz
dGluZy11bnJlbGF0ZWQtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQoWY3J
mMdbhbchnJkKvDhP8C9FCuP0ByqxkDRCNrhuGvpoLroz3f1MLoAnqvEIuniiOsP5
w0D+UyY1CzFvKaiDo1MwUTAdBgNVHQ4EFgQUWU0PPWkHVqbpBqGAvs76egNALWww
HwYDVR0jBBgwFoAUWU0PPWkHVqbpBqGAvs76egNALWwwDwYDVR0TAQH/BAUwAwEB
/zAKBggqhkjOPQQDAgNIADBFAiEAvkmkNYvYs6ErzRaBu2ldZK5f9pSzy36ui0ME
etuHYcECIER734KvMZzf6N0oiNqm0J0erauHj0LF5ceFu8/a4FpJ
-----END CERTIFICATE-----
"""


def server_context() -> ssl.SSLContext:
    """A server-side TLS context with the built-in test certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads chains from files only: write them to a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="vmmove-prism-tls-") as tmp:
        cert = Path(tmp, "server.crt")
        key = os.path.join(tmp, "server.key")
        cert.write_text(SERVER_CERT_PEM + CA_PEM, encoding="ascii")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="ascii") as f:
            f.write(SERVER_KEY_PEM)
        ctx.load_cert_chain(str(cert), key)
    return ctx
