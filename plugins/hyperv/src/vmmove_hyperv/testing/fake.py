"""The whole fake: an emulated Hyper-V fabric behind the fake WinRM endpoint, one loopback
address per host, ready for ``vmmove.connect``::

    with FakeHyperV(shape="7") as fake:
        conn = vmmove.connect(fake.uri, password=vmmove.Secret(fake.password))
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from vmmove_hyperv.testing.emulation import HyperVShell, Shape
from vmmove_hyperv.testing.fabric import Fabric
from vmmove_hyperv.testing.wsman import WinRMServer

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USER", "FakeHyperV"]

DEFAULT_USER = "Administrator"
DEFAULT_PASSWORD = "fake-hyperv-password"  # noqa: S105 (the fake's, printed on start)


class FakeHyperV:
    def __init__(
        self,
        fabric: Fabric | None = None,
        *,
        shape: Shape | str = "5.1",
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        auth: tuple[str, ...] = ("basic", "ntlm"),
        tls: bool = False,
        **server_options: Any,
    ) -> None:
        self.fabric = fabric if fabric is not None else Fabric().sample()
        self.shell = HyperVShell(self.fabric, shape)
        self.user = user
        self.password = password
        self.server = WinRMServer(
            self.shell, users={user: password}, auth=auth, tls=tls, **server_options
        )

    def __repr__(self) -> str:
        return f"FakeHyperV(hosts={sorted(self.fabric.hosts)}, shape={self.shell.shape.release})"

    def start(self) -> FakeHyperV:
        self.server.start()
        for name in self.fabric.hosts:
            self.server.add_host(name)
        return self

    def stop(self) -> None:
        self.fabric.release_all()
        self.server.stop()

    def __enter__(self) -> FakeHyperV:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def uri(self) -> str:
        """``hyperv://USER@ADDR1,ADDR2,...`` (the password goes separately, never in a URI)."""
        hosts = ",".join(self.server.hosts[name] for name in sorted(self.fabric.hosts))
        return f"hyperv://{self.user}@{hosts}"
