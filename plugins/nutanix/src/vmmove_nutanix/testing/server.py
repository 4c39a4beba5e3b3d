"""The fake Prism on a real socket: :class:`FakePrism` serves :class:`PrismApp` over HTTPS
(its own CA, :mod:`vmmove_nutanix.testing._tls`) from a werkzeug server thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from vmmove_nutanix.testing._tls import CA_PEM, server_context
from vmmove_nutanix.testing.app import DEFAULT_PASSWORD, DEFAULT_USER, Fault, PrismApp
from vmmove_nutanix.testing.prism import PrismState, TaskTiming

__all__ = ["FakePrism"]


class _Quiet(WSGIRequestHandler):
    """No access log on stderr (a dropped connection would print a traceback too); no
    Nagle delay between the headers and the body of an answer."""

    disable_nagle_algorithm = True

    def log(self, type: str, message: str, *args: Any) -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:
        pass


class FakePrism:
    """A fake Prism Central (``api="v4.0"``, ``"v4.0.b1"``, ``"v4.0.a1"``) or Prism Element
    (``api="v2.0"``) on ``https://127.0.0.1:<port>``::

        with FakePrism(api="v4.0") as prism:
            prism.state.sample()
            conn = vmmove.connect(prism.uri, ca_file=prism.ca_file(tmp), password=...)
    """

    def __init__(
        self,
        *,
        api: str = "v4.0",
        clock: Callable[[], float] | None = None,
        timing: TaskTiming | None = None,
        user: str = DEFAULT_USER,
        password: str | None = DEFAULT_PASSWORD,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.state = PrismState(clock=clock, timing=timing)
        self.app = PrismApp(self.state, api=api, user=user, password=password)
        self.user = user
        self.password = password
        self._host = host
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def api(self) -> str:
        return self.app.api

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake Prism is not started")
        return self._server.server_port

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def uri(self) -> str:
        """The vmmove URI for this server (``nutanix+v2://`` for Prism Element)."""
        scheme = "nutanix+v2" if self.api == "v2.0" else "nutanix"
        return f"{scheme}://{self.user}@{self._host}:{self.port}"

    def ca_file(self, folder: str | Path) -> Path:
        """Write the CA that signed this server's certificate into ``folder``."""
        path = Path(folder) / "prism-ca.pem"
        path.write_text(CA_PEM, encoding="ascii")
        return path

    def fault(self, method: str, path: str, **kwargs: Any) -> Fault:
        """Break matching requests (see :class:`~vmmove_nutanix.testing.app.Fault`)."""
        return self.app.add_fault(Fault(method, path, **kwargs))

    def start(self) -> FakePrism:
        self._server = make_server(
            self._host,
            self._port,
            self.app,
            threaded=True,
            request_handler=_Quiet,
            ssl_context=server_context(),
        )
        server = self._server
        self._thread = threading.Thread(
            # a short select timeout: shutdown() waits for it (0.5 s by default, per test)
            target=lambda: server.serve_forever(poll_interval=0.02),
            name="vmmove-fake-prism",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        self._server = self._thread = None

    def __enter__(self) -> FakePrism:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
