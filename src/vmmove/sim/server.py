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
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
        return {"k": "auto-converge"}
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
        return AutoConverge()
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
        self._log_lock = threading.Lock()
        self._calls: dict[str, Callable[[dict[str, Any]], Any]] = self._table()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one connection per client

            def setup(self) -> None:
                super().setup()
                # Without it each answer waits on Nagle and delayed ACKs (~40 ms).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: thousands of calls

            def do_GET(self) -> None:
                if self.path == "/log":
                    with server._log_lock:
                        self._send(200, {"log": list(server.log)})
                elif self.path == "/clock":
                    self._send(200, server._clock_info())
                else:
                    self._send(404, {"error": {"type": "NotFound", "message": self.path}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length))
                    self._send(200, server.call(body))
                except VMMoveError as exc:
                    self._send(200, {"error": wire.error_out(exc)})
                except (KeyError, TypeError, ValueError) as exc:
                    message = f"{type(exc).__name__}: {exc}"
                    self._send(400, {"error": {"type": "InvalidInput", "message": message}})

            def _send(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.uri = f"sim+http://127.0.0.1:{self.port}"

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
