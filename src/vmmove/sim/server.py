"""The simulator as its own server process, so that several vmmove processes (workers) can
migrate VMs in one simulated estate: ``python -m vmmove.sim serve [--port N] [--speed N]
[--inventory FILE]``, reached by ``sim+http://127.0.0.1:PORT`` (:mod:`vmmove.sim.remote`).

One :class:`~vmmove.sim.backend.SimBackend` on a scaled real-time clock answers every
client over HTTP/1.1 (keep-alive, JSON). Every call that changes the estate is kept in an
action log (client, call, VM, server time) that tests read at ``GET /log``: it says which
worker acted on what, and when. Local use only: it has no authentication.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmmove.clock import ScaledClock
from vmmove.errors import VMMoveError
from vmmove.policy import Action, AutoConverge, PostCopy, SetBandwidth, SetDowntime
from vmmove.sim import inventory as inv
from vmmove.sim import wire
from vmmove.sim.backend import SimBackend

__all__ = ["SimServer", "action_in", "action_out"]

# Calls that change the estate: logged with the client that made them.
_ACTIONS = frozenset(
    {"start", "abort", "tune", "reserve", "release", "power_off", "power_on", "relocate"}
)


def action_out(action: Action) -> dict[str, Any]:
    if isinstance(action, SetDowntime):
        return {"k": "downtime", "ms": action.ms}
    if isinstance(action, SetBandwidth):
        return {"k": "bandwidth", "mib_s": action.mib_s}
    if isinstance(action, AutoConverge):
        return {"k": "auto-converge", "initial": action.initial, "increment": action.increment}
    if isinstance(action, PostCopy):
        return {"k": "post-copy"}
    return {"k": str(action)}


def action_in(d: dict[str, Any]) -> Action:
    kind = d.get("k")
    if kind == "downtime":
        return SetDowntime(ms=int(d["ms"]))
    if kind == "bandwidth":
        return SetBandwidth(mib_s=int(d["mib_s"]))
    if kind == "auto-converge":
        return AutoConverge(initial=d.get("initial"), increment=d.get("increment"))
    if kind == "post-copy":
        return PostCopy()
    raise ValueError(f"unknown action {kind!r}")


class SimServer:
    """A :class:`SimBackend` served over HTTP."""

    def __init__(
        self, inventory: inv.SimInventory | None = None, *, speed: float = 1.0, port: int = 0
    ) -> None:
        self.clock = ScaledClock(speed)
        self.backend = SimBackend(inventory, clock=self.clock)
        self.log: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {}  # calls answered, by method (benchmarks)
        self._log_lock = threading.Lock()
        self._calls: dict[str, Callable[[dict[str, Any]], Any]] = self._table()
        server = self

        class Handler(socketserver.StreamRequestHandler):
            """HTTP/1.1 with keep-alive, parsed by hand: ``http.server`` spends more CPU on
            each request's headers than the simulator on the call itself."""

            def setup(self) -> None:
                super().setup()
                # Without it each answer waits on Nagle and delayed ACKs (~40 ms).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def handle(self) -> None:
                while True:
                    request = _read_request(self.rfile)
                    if request is None:
                        return
                    method, path, body, close = request
                    code, payload = server.answer(method, path, body)
                    data = json.dumps(payload).encode()
                    head = _HEAD % (code, _REASONS.get(code, b"Error"), len(data))
                    self.wfile.write(head + data)
                    if close:
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.uri = f"sim+http://127.0.0.1:{self.port}"

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """The status and JSON answer to one request."""
        if method == "GET":
            if path == "/log":
                with self._log_lock:
                    return 200, {"log": list(self.log)}
            if path == "/stats":
                return 200, {"calls": dict(self.calls)}
            if path == "/clock":
                return 200, self._clock_info()
            return 404, {"error": {"type": "NotFound", "message": path}}
        try:
            return 200, self.call(json.loads(body))
        except VMMoveError as exc:
            return 200, {"error": wire.error_out(exc)}
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {
                "error": {"type": "InvalidInput", "message": f"{type(exc).__name__}: {exc}"}
            }

    def _clock_info(self) -> dict[str, Any]:
        # Clients on this machine rebuild the very same scaled clock from these (one
        # monotonic clock per boot), so records from every worker share one time line.
        return {
            "speed": self.clock.speed,
            "m0": self.clock._m0,
            "t0": self.clock._t0,
            "now": self.clock.now(),
            "boot_id": boot_id(),
        }

    def _table(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        b = self.backend
        return {
            "hosts": lambda a: [wire.host_out(h) for h in b.hosts()],
            "vms": lambda a: [wire.vm_out(v) for v in b.vms()],
            "host": lambda a: wire.host_out(b.host(a["ref"])),
            "vm": lambda a: wire.vm_out(b.vm(a["ref"])),
            "locate": lambda a: b.locate(a["vm"]),
            "check": lambda a: wire.problems_out(
                b.check(
                    wire.vm_in(a["vm"]),
                    wire.host_in(a["target"]),
                    wire.spec_in(a["spec"]),
                    mode=_mode(a["mode"]),
                    policy=_no_policy(),
                )
            ),
            "reserve": lambda a: wire.reservation_out(
                b.reserve(wire.vm_in(a["vm"]), wire.host_in(a["target"]), wire.spec_in(a["spec"]))
            ),
            "release": lambda a: b.release(_reservation(a["reservation"])),
            "start": lambda a: wire.job_out(
                b.start(
                    wire.vm_in(a["vm"]),
                    wire.host_in(a["target"]),
                    wire.spec_in(a["spec"]),
                    _mode(a["mode"]),
                    policy=_no_policy(),
                    needs=frozenset(a["needs"]),
                    reservation=wire.reservation_in(a["reservation"]),
                    request_id=a["request_id"],
                )
            ),
            "poll": lambda a: wire.status_out(b.poll(wire.job_in(a["job"]))),
            "tune": lambda a: b.tune(wire.job_in(a["job"]), action_in(a["action"])),
            "abort": lambda a: b.abort(wire.job_in(a["job"])),
            "attach": lambda a: wire.job_out(b.attach(_ref(a["ref"]))),
            "power_off": lambda a: b.power_off(wire.vm_in(a["vm"]), force=bool(a["force"])),
            "power_on": lambda a: b.power_on(wire.vm_in(a["vm"])),
            "relocate": lambda a: wire.job_out(
                b.relocate(
                    wire.vm_in(a["vm"]),
                    wire.host_in(a["target"]),
                    wire.spec_in(a["spec"]),
                    request_id=a["request_id"],
                )
            ),
        }

    def call(self, body: dict[str, Any]) -> dict[str, Any]:
        method = body["method"]
        args = body.get("args", {})
        handler = self._calls.get(method)
        if handler is None:
            raise ValueError(f"no method {method!r}")
        result = handler(args)
        self.calls[method] = self.calls.get(method, 0) + 1  # a lost count under races is fine
        if method in _ACTIONS:
            vm = args.get("vm", {}).get("id") if isinstance(args.get("vm"), dict) else None
            if vm is None and isinstance(args.get("job"), dict):
                vm = args["job"].get("vm")
            entry = {
                "client": str(body.get("client", "")),
                "call": method,
                "vm": vm,
                "at": self.clock.time(),
                "mono": time.monotonic(),
            }
            with self._log_lock:
                self.log.append(entry)
        return {"result": result}

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_HEAD = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}
_LINE = 65536


def _read_request(rfile: Any) -> tuple[str, str, bytes, bool] | None:
    """One request (method, path, body, close after it), or ``None`` once the client
    closed the connection or sent something that is not HTTP/1.x."""
    line = rfile.readline(_LINE)
    while line in (b"\r\n", b"\n"):  # stray blank lines between requests
        line = rfile.readline(_LINE)
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    length, close = 0, parts[2] == b"HTTP/1.0"
    while True:
        header = rfile.readline(_LINE)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                return None
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    body = rfile.read(length) if length else b""
    if len(body) < length:
        return None
    return parts[0].decode("ascii"), parts[1].decode("ascii"), body, close


def _mode(value: str) -> Any:
    from vmmove.model import MigrationMode  # noqa: PLC0415

    return MigrationMode(value)


def _no_policy() -> Any:
    from vmmove.policy import resolve  # noqa: PLC0415

    return resolve("none")


def _reservation(d: dict[str, Any]) -> Any:
    r = wire.reservation_in(d)
    if r is None:
        raise ValueError("release needs a reservation")
    return r


def _ref(d: dict[str, str]) -> Any:
    from vmmove.backend import JobRef  # noqa: PLC0415

    return JobRef.load(d)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
