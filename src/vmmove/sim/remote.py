"""``sim+http://HOST:PORT``: a backend that drives a simulator server
(:mod:`vmmove.sim.server`) over HTTP, so several processes share one simulated estate.

Its clock is the server's: on the same machine it is rebuilt exactly (one monotonic clock
per boot), elsewhere estimated from one round trip. Records written by every worker then
share one time line. ``?client=NAME`` names this client in the server's action log.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vmmove.backend import Backend, Job, JobRef, JobStatus, Reservation
from vmmove.errors import ConnectionFailed, InvalidInput
from vmmove.model import HostInfo, MigrationMode, MigrationSpec, Problem, VMInfo
from vmmove.policy import Action, Policy
from vmmove.sim import wire
from vmmove.sim.backend import SimBackend
from vmmove.sim.server import action_out, boot_id

__all__ = ["RemoteSimBackend", "ServerClock"]


class ServerClock:
    """The simulator server's scaled clock, seen from a client."""

    virtual = False

    def __init__(self, speed: float, m0: float, t0: float) -> None:
        self.speed = speed
        self._m0 = m0
        self._t0 = t0

    def now(self) -> float:
        return (time.monotonic() - self._m0) * self.speed

    def time(self) -> float:
        return self._t0 + self.now()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds) / self.speed)


class RemoteSimBackend(Backend):
    scheme = "sim+http"
    capabilities = SimBackend.capabilities
    poll_interval = SimBackend.poll_interval

    def __init__(self, host: str, port: int, *, client: str = "", timeout: float = 10.0) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self.client = client or f"pid-{os.getpid()}"
        self._lock = threading.Lock()
        self._http: tuple[socket.socket, Any] | None = None
        t_send = time.monotonic()
        info = self._get("/clock")
        t_back = time.monotonic()
        speed = float(info["speed"])
        if info.get("boot_id") and info["boot_id"] == boot_id():
            self._clock = ServerClock(speed, float(info["m0"]), float(info["t0"]))
        else:  # another machine: the server's "now" was read about halfway through
            mid = (t_send + t_back) / 2
            m0 = mid - float(info["now"]) / speed
            self._clock = ServerClock(speed, m0, float(info["t0"]))

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, Any]) -> RemoteSimBackend:
        unknown = set(options) - {"password"}  # the CLI passes $VMMOVE_PASSWORD to all
        if unknown:
            raise InvalidInput(f"unknown sim+http:// option(s): {', '.join(sorted(unknown))}")
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError as exc:
            raise InvalidInput(f"malformed sim+http URI: {exc}") from None
        if not parts.hostname or port is None:
            raise InvalidInput("sim+http:// needs a host and a port: sim+http://127.0.0.1:PORT")
        query = parse_qs(parts.query)
        unknown = set(query) - {"client"}
        if unknown:
            raise InvalidInput(f"unknown sim+http:// option(s): {', '.join(sorted(unknown))}")
        return cls(parts.hostname, port, client=query.get("client", [""])[-1])

    @property
    def clock(self) -> ServerClock:
        return self._clock

    # ---- transport -----------------------------------------------------------------------
    def _connection(self) -> tuple[socket.socket, Any]:
        if self._http is None:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._http = (sock, sock.makefile("rb"))
        return self._http

    def _request(self, method: str, path: str, body: bytes | None) -> Any:
        # HTTP/1.1 by hand, as the server speaks it: http.client parses every answer's
        # headers with the email package, most of a call's CPU on both sides.
        payload = body or b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        with self._lock:
            try:
                sock, rfile = self._connection()
                sock.sendall(head.encode("ascii") + payload)
                data = _read_answer(rfile)
            except (OSError, ValueError) as exc:
                self._drop()
                raise ConnectionFailed(
                    f"simulator server {self._host}:{self._port} unreachable: {exc}"
                ) from None
        try:
            return json.loads(data)
        except ValueError:
            raise ConnectionFailed("simulator server answered something that is not JSON") from None

    def _drop(self) -> None:
        if self._http is not None:
            sock, rfile = self._http
            rfile.close()
            sock.close()
            self._http = None

    def _get(self, path: str) -> Any:
        return self._request("GET", path, None)

    def _call(self, method: str, **args: Any) -> Any:
        body = json.dumps({"method": method, "args": args, "client": self.client}).encode()
        answer = self._request("POST", "/call", body)
        if "error" in answer:
            raise wire.error_in(answer["error"])
        return answer["result"]

    def action_log(self) -> list[dict[str, Any]]:
        """What every client asked of the estate (tests)."""
        log: list[dict[str, Any]] = self._get("/log")["log"]
        return log

    # ---- the backend ---------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        return [wire.host_in(h) for h in self._call("hosts")]

    def vms(self) -> list[VMInfo]:
        return [wire.vm_in(v) for v in self._call("vms")]

    def host(self, ref: str) -> HostInfo:
        return wire.host_in(self._call("host", ref=ref))

    def vm(self, ref: str) -> VMInfo:
        return wire.vm_in(self._call("vm", ref=ref))

    def locate(self, vm_id: str) -> str | None:
        found = self._call("locate", vm=vm_id)
        return None if found is None else str(found)

    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        return wire.problems_in(
            self._call(
                "check",
                vm=wire.vm_out(vm),
                target=wire.host_out(target),
                spec=wire.spec_out(spec),
                mode=mode.value,
            )
        )

    def reserve(self, vm: VMInfo, target: HostInfo, spec: MigrationSpec) -> Reservation | None:
        return wire.reservation_in(
            self._call(
                "reserve",
                vm=wire.vm_out(vm),
                target=wire.host_out(target),
                spec=wire.spec_out(spec),
            )
        )

    def release(self, reservation: Reservation) -> None:
        self._call("release", reservation=wire.reservation_out(reservation))

    def start(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        policy: Policy,
        needs: frozenset[str],
        reservation: Reservation | None,
        request_id: str = "",
    ) -> Job:
        return wire.job_in(
            self._call(
                "start",
                vm=wire.vm_out(vm),
                target=wire.host_out(target),
                spec=wire.spec_out(spec),
                mode=mode.value,
                needs=sorted(needs),
                reservation=wire.reservation_out(reservation),
                request_id=request_id,
            )
        )

    def poll(self, job: Job) -> JobStatus:
        return wire.status_in(self._call("poll", job=wire.job_out(job)))

    def tune(self, job: Job, action: Action) -> float | None:
        self._call("tune", job=wire.job_out(job), action=action_out(action))
        return None

    def abort(self, job: Job) -> None:
        self._call("abort", job=wire.job_out(job))

    def attach(self, ref: JobRef) -> Job:
        return wire.job_in(self._call("attach", ref=ref.dump()))

    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        self._call("power_off", vm=wire.vm_out(vm), force=force)

    def power_on(self, vm: VMInfo) -> None:
        self._call("power_on", vm=wire.vm_out(vm))

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        return wire.job_in(
            self._call(
                "relocate",
                vm=wire.vm_out(vm),
                target=wire.host_out(target),
                spec=wire.spec_out(spec),
                request_id=request_id,
            )
        )

    def close(self) -> None:
        with self._lock:
            self._drop()


def _read_answer(rfile: Any) -> bytes:
    """The body of one HTTP/1.1 answer (framed by Content-Length, as the server sends)."""
    status = rfile.readline(65536)
    if not status.startswith(b"HTTP/1."):
        raise ValueError("the connection closed" if not status else "not an HTTP answer")
    length = None
    while True:
        header = rfile.readline(65536)
        if header in (b"\r\n", b"\n"):
            break
        if not header:
            raise ValueError("the connection closed mid-answer")
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ValueError("an answer without Content-Length")
    data: bytes = rfile.read(length)
    if len(data) < length:
        raise ValueError("the connection closed mid-answer")
    return data
