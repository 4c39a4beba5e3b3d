"""TLS material for the fake API server. TEST ONLY: the private key below is public.

A throw-away CA and a server certificate it signed, valid from 2020 until 2126 for ``127.0.0.1``,
``::1`` and ``localhost`` (EC P-256). Clients trust :data:`CA_PEM`; nothing else should.
Pass your own ``certfile``/``keyfile`` to :class:`~vmmove_kubevirt.testing.KubeApiServer` to
use other names.
"""

from __future__ import annotations

import os
import ssl
import tempfile

__all__ = ["CA_PEM", "SERVER_CERT_PEM", "SERVER_KEY_PEM", "server_context"]

CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBdTCCARygAwIBAgICEAAwCgYIKoZIzj0EAwIwITEfMB0GA1UEAwwWdm1tb3Zl
LXRlc3Rpbmcta3ViZS1jYTAgFw0yMDAxMDEwMDAwMDBaGA8yMTI2MDEwMTAwMDAw
MFowITEfMB0GA1UEAwwWdm1tb3ZlLXRlc3Rpbmcta3ViZS1jYTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABKfyGGso8/nXqWSLTj/WB5QQBAp7n5ZZgUGV/zAJc/eq
5VY6PzjekfAeeJCKXi6k6vRFeANy7dthEKPdo0ydC4qjQjBAMA8GA1UdEwEB/wQF
MAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBRBl6HYcFOfipRNqo/jFOgF
21qAlzAKBggqhkjOPQQDAgNHADBEAiAdLFyfwoUaM+gv8CjfLuInxogYtrKyNtYd
LO+m8f/x+gIgMKqI6XiMTaPfrxwoonX3fvkRxPRwDI8w+8a6451JC2o=
-----END CERTIFICATE-----
"""

SERVER_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIB3jCCAYOgAwIBAgICEAEwCgYIKoZIzj0EAwIwITEfMB0GA1UEAwwWdm1tb3Zl
LXRlc3Rpbmcta3ViZS1jYTAgFw0yMDAxMDEwMDAwMDBaGA8yMTI2MDEwMTAwMDAw
MFowJTEjMCEGA1UEAwwadm1tb3ZlLWZha2Uta3ViZS1hcGlzZXJ2ZXIwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAT1aFSvL3Xnlz219C6DUdMXeherxK1ySo1w1U3b
QRWJZ7czYn96VEcfynVwrZO9IcoMasZT9qLv63g6UtFPZkZFo4GkMIGhMAwGA1Ud
EwEB/wQCMAAwDgYDVR0PAQH/BAQDAgWgMBMGA1UdJQQMMAoGCCsGAQUFBwMBMCwG
A1UdEQQlMCOHBH8AAAGHEAAAAAAAAAAAAAAAAAAAAAGCCWxvY2FsaG9zdDAfBgNV
HSMEGDAWgBRBl6HYcFOfipRNqo/jFOgF21qAlzAdBgNVHQ4EFgQUPLbbPF7izvc0
Yc3sZuCDhTfatA0wCgYIKoZIzj0EAwIDSQAwRgIhANt+ynRqAJf5riL1ENp0yrGc
7n9/DSvXFcMrCZJzkXJEAiEAuI7z7519/8NDgqJ3yw3klfp3SJxYLlFKoTD3F1Ee
Acw=
-----END CERTIFICATE-----
"""

SERVER_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjswiD3Fspis5OaXB
c8Ow8+D5AvvhctwWEM3FaBfMYvahRANCAAT1aFSvL3Xnlz219C6DUdMXeherxK1y
So1w1U3bQRWJZ7czYn96VEcfynVwrZO9IcoMasZT9qLv63g6UtFPZkZF
-----END PRIVATE KEY-----
"""


def server_context(certfile: str | None = None, keyfile: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context: the given files, or the built-in test certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
        return ctx
    # ssl loads chains from files only: write them to a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="vmmove-kube-tls-") as tmp:
        cert = os.path.join(tmp, "server.crt")
        key = os.path.join(tmp, "server.key")
        with open(cert, "w", encoding="ascii") as f:
            f.write(SERVER_CERT_PEM + CA_PEM)
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="ascii") as f:
            f.write(SERVER_KEY_PEM)
        ctx.load_cert_chain(cert, key)
    return ctx
