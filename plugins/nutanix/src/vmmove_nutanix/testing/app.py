"""The fake Prism's web layer: a werkzeug WSGI app rendering :class:`PrismState` as Prism
Central's v4 API or Prism Element's v2.0, with HTTP Basic, ETags, request-id idempotency and
fault injection.

``api`` picks the generation the server answers: ``"v4.0"`` (Prism Central), an older
``"v4.0.b1"`` or ``"v4.0.a1"`` (the version is in every v4 path), or ``"v2.0"`` (Prism
Element alone: no v4 at all). Anything else answers 404, as a real server does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from vmmove_nutanix.testing.prism import ApiError, FakeHost, FakeTask, FakeVM, PrismState

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USER", "V4_VERSIONS", "Fault", "LoggedRequest", "PrismApp"]

DEFAULT_USER = "admin"
DEFAULT_PASSWORD = "fake-prism-password"  # noqa: S105 (the fake's, public)
V4_VERSIONS = ("v4.0", "v4.0.b1", "v4.0.a1")
_V2_BASES = ("/api/nutanix/v2.0", "/PrismGateway/services/rest/v2.0")
_TASK_PREFIX = "ZXJnb24=:"  # v4 task ids carry their service, as Prism's do


@dataclass
class Fault:
    """Break the next ``times`` requests matching ``method`` and ``path`` (a regex searched
    in the path; ``body``: a regex the request body must contain too).

    ``status``: answer this error instead (with ``Retry-After: retry_after`` if set).
    ``drop``: act on the request, then drop the connection before answering.
    ``hold``: wait until the event is set (a slow answer), then answer normally.
    ``before``: run this first (someone else changes the estate: a VM update makes the
    ETag a client holds stale).
    """

    method: str
    path: str
    status: int | None = None
    message: str = "injected fault"
    retry_after: float | None = None
    drop: bool = False
    hold: threading.Event | None = None
    body: str | None = None
    before: Callable[[], None] | None = None
    times: int = 1

    def matches(self, method: str, path: str, body: str) -> bool:
        return (
            self.times > 0
            and method == self.method
            and re.search(self.path, path) is not None
            and (self.body is None or re.search(self.body, body) is not None)
        )


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    request_id: str
    if_match: str
    status: int


@dataclass
class PrismApp:
    state: PrismState
    api: str = "v4.0"
    user: str = DEFAULT_USER
    password: str | None = DEFAULT_PASSWORD
    faults: list[Fault] = field(default_factory=list)
    log: list[LoggedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.api not in (*V4_VERSIONS, "v2.0"):
            raise ValueError(f"api must be one of {(*V4_VERSIONS, 'v2.0')}")
        self._lock = threading.Lock()
        v = re.escape(self.api)
        vm = r"/api/vmm/" + v + r"/ahv/config/vms"
        self._v4: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("GET", re.compile(r"/api/clustermgmt/" + v + r"/config/hosts"), self._v4_hosts),
            ("GET", re.compile(vm), self._v4_vms),
            ("GET", re.compile(vm + r"/([^/]+)"), self._v4_vm),
            ("PUT", re.compile(vm + r"/([^/]+)"), self._v4_update),
            ("POST", re.compile(vm + r"/([^/]+)/\$actions/([a-z-]+)"), self._v4_action),
            ("GET", re.compile(r"/api/prism/" + v + r"/config/tasks/([^/]+)"), self._v4_task),
        ]
        self._v2: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("GET", re.compile(r"/hosts/?"), self._v2_hosts),
            ("GET", re.compile(r"/vms/?"), self._v2_vms),
            ("GET", re.compile(r"/vms/([^/]+)/?"), self._v2_vm),
            ("PUT", re.compile(r"/vms/([^/]+)/?"), self._v2_update),
            ("POST", re.compile(r"/vms/([^/]+)/migrate/?"), self._v2_migrate),
            ("POST", re.compile(r"/vms/([^/]+)/set_power_state/?"), self._v2_power),
            ("GET", re.compile(r"/tasks/([^/]+)"), self._v2_task),
            ("POST", re.compile(r"/tasks/list/?"), self._v2_task_list),
        ]

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    # ---- WSGI -------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        status = 0
        try:
            response = self._respond(request, environ)
            status = response.status_code
        finally:
            with self._lock:
                self.log.append(
                    LoggedRequest(
                        request.method,
                        request.path,
                        request.headers.get("NTNX-Request-Id", ""),
                        request.headers.get("If-Match", ""),
                        status,
                    )
                )
        if environ.get("vmmove.drop"):
            # the server acted (and logged it); the client never hears the answer
            sock = environ.get("werkzeug.socket")
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return response(environ, start_response)

    def _respond(self, request: Request, environ: dict[str, Any]) -> Response:
        if not self._authorized(request):
            return self._error(401, "authentication required", v4=self.api != "v2.0")
        body = request.get_data(as_text=True)
        fault = self._fault(request.method, request.path, body)
        if fault is not None and fault.before is not None:
            with self.state.lock:
                fault.before()
        if fault is not None and fault.hold is not None:
            fault.hold.wait(30.0)  # a slow answer: released by the test, bounded
        if fault is not None and fault.status is not None:
            response = self._error(fault.status, fault.message, v4=self.api != "v2.0")
            if fault.retry_after is not None:
                response.headers["Retry-After"] = f"{fault.retry_after:g}"
            return response
        try:
            response = self._route(request)
        except ApiError as exc:
            response = self._error(exc.status, exc.message, v4=self.api != "v2.0")
        if fault is not None and fault.drop:
            environ["vmmove.drop"] = True
        return response

    def _authorized(self, request: Request) -> bool:
        if self.password is None:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == self.user and password == self.password

    def _fault(self, method: str, path: str, body: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, body):
                    fault.times -= 1
                    return fault
        return None

    def _route(self, request: Request) -> Response:
        path = request.path
        if self.api == "v2.0":
            for base in _V2_BASES:
                if path.startswith(base + "/"):
                    return self._dispatch(self._v2, request, path[len(base) :])
        else:
            return self._dispatch(self._v4, request, path)
        raise ApiError(404, f"no such path {path}")

    @staticmethod
    def _dispatch(
        routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]],
        request: Request,
        path: str,
    ) -> Response:
        for method, pattern, handler in routes:
            match = pattern.fullmatch(path)
            if match is not None and method == request.method:
                return handler(request, *match.groups())
        raise ApiError(404, f"no such path {request.path}")

    # ---- rendering --------------------------------------------------------------------
    @staticmethod
    def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(
            json.dumps(body), status=status, headers=headers, content_type="application/json"
        )

    def _error(self, status: int, message: str, *, v4: bool) -> Response:
        if v4:
            body: dict[str, Any] = {
                "data": {"error": [{"message": message, "code": f"VMM-{status}"}]}
            }
        else:
            body = {"message": message, "error_code": {"code": status}}
        return self._json(body, status)

    def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.get_data(as_text=True) or "{}")
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body is not an object")
        return body

    @staticmethod
    def _page(request: Request, items: list[Any], *, v4: bool) -> tuple[list[Any], int]:
        try:
            if v4:
                page = int(request.args.get("$page", "0"))
                limit = int(request.args.get("$limit", "50"))
                if not 1 <= limit <= 100 or page < 0:
                    raise ValueError
                start = page * limit
            else:
                page = int(request.args.get("page", "1"))
                limit = int(request.args.get("count", "100"))
                if limit < 1 or page < 1:
                    raise ValueError
                start = (page - 1) * limit
        except ValueError:
            raise ApiError(400, "bad paging parameters") from None
        return items[start : start + limit], len(items)

    # ---- v4 -----------------------------------------------------------------------------
    def _v4_host(self, h: FakeHost) -> dict[str, Any]:
        state = "ENTERED_MAINTENANCE_MODE" if h.maintenance else "ACROPOLIS_NORMAL"
        return {
            "extId": h.id,
            "hostName": h.name,
            "cluster": {"uuid": h.cluster, "name": "cluster"},
            "hypervisor": {"type": "AHV", "state": state},
            "memorySizeBytes": h.memory,
            "numberOfCpuCores": h.cpus // 2,
            "numberOfCpuThreads": h.cpus,
            "$objectType": "clustermgmt.v4.config.Host",
        }

    def _v4_vm_doc(self, vm: FakeVM) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "extId": vm.id,
            "name": vm.name,
            "powerState": vm.power,
            "memorySizeBytes": vm.memory,
            "numSockets": vm.vcpus,
            "numCoresPerSocket": 1,
            "numThreadsPerCore": 1,
            "cluster": {"extId": vm.cluster},
            "isLiveMigrateCapable": vm.live_migrate and not vm.gpus,
            "gpus": [{"mode": "PASSTHROUGH_COMPUTE"}] * vm.gpus,
            "$objectType": "vmm.v4.ahv.config.Vm",
        }
        if vm.shown_host():
            doc["host"] = {"extId": vm.shown_host()}
        if vm.affinity:
            doc["hostAffinity"] = {"hosts": [{"extId": h} for h in vm.affinity]}
        return doc

    def _v4_task_doc(self, t: FakeTask) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "extId": _TASK_PREFIX + t.id,
            "operation": t.operation,
            "status": t.status,
            "progressPercentage": t.percent,
            "isCancelable": False,
            "entitiesAffected": [{"extId": t.vm, "rel": "vmm:ahv:config:vm"}],
            "createdTime": _iso(t.wall),
            "$objectType": "prism.v4.config.Task",
        }
        if t.target:
            doc["entitiesAffected"].append({"extId": t.target, "rel": "clustermgmt:config:host"})
        if t.finished is not None:
            doc["completedTime"] = _iso(self.state.wall(t.finished))
        if t.error:
            doc["errorMessages"] = [{"message": t.error, "severity": "ERROR"}]
        return doc

    def _v4_hosts(self, request: Request) -> Response:
        with self.state.lock:
            hosts = [self._v4_host(h) for h in self.state.hosts.values()]
        page, total = self._page(request, hosts, v4=True)
        return self._json({"data": page, "metadata": {"totalAvailableResults": total}})

    def _v4_vms(self, request: Request) -> Response:
        with self.state.lock:
            self.state.tick()
            vms = list(self.state.vms.values())
            wanted = request.args.get("$filter")
            if wanted is not None:
                match = re.fullmatch(r"name eq '((?:[^']|'')*)'", wanted.strip())
                if match is None:
                    raise ApiError(400, f"unsupported $filter {wanted!r}")
                name = match.group(1).replace("''", "'")
                vms = [v for v in vms if v.name == name]
            docs = [self._v4_vm_doc(v) for v in vms]
        page, total = self._page(request, docs, v4=True)
        return self._json({"data": page, "metadata": {"totalAvailableResults": total}})

    def _v4_vm(self, request: Request, vm_id: str) -> Response:
        with self.state.lock:
            vm = self.state.read_vm(vm_id)
            return self._json({"data": self._v4_vm_doc(vm)}, headers={"ETag": vm.etag})

    def _v4_task(self, request: Request, task_id: str) -> Response:
        with self.state.lock:
            self.state.tick()
            task = self.state.tasks.get(task_id.removeprefix(_TASK_PREFIX))
            if task is None:
                raise ApiError(404, f"task {task_id} not found")
            return self._json({"data": self._v4_task_doc(task)})

    def _v4_mutation(
        self, request: Request, vm_id: str, act: Callable[[str], FakeTask]
    ) -> Response:
        """Idempotency first (a known request id answers what it answered), then the ETag."""
        rid = request.headers.get("NTNX-Request-Id", "")
        with self.state.lock:
            if rid and rid in self.state.requests:
                status, body = self.state.requests[rid]
                return self._json(body, status)
            vm = self.state.vms.get(vm_id)
            if vm is None:
                raise ApiError(404, f"VM {vm_id} not found")
            if "If-Match" not in request.headers:
                raise ApiError(428, "If-Match is required")
            if request.headers["If-Match"] != vm.etag:
                raise ApiError(412, "the ETag is stale: read the VM again")
            task = act(rid)
            body = {"data": {"extId": _TASK_PREFIX + task.id, "$objectType": "TaskReference"}}
            if rid:
                self.state.requests[rid] = (202, body)
            return self._json(body, 202)

    def _v4_action(self, request: Request, vm_id: str, action: str) -> Response:
        body = self._body(request)
        if action == "migrate-to-host":
            host = body.get("host")
            if not isinstance(host, dict) or not isinstance(host.get("extId"), str):
                raise ApiError(400, "host.extId is required")
            target = str(host["extId"])
            return self._v4_mutation(
                request, vm_id, lambda rid: self.state.migrate(vm_id, target, request_id=rid)
            )
        transitions = {"power-on": "ON", "power-off": "OFF", "shutdown": "ACPI_SHUTDOWN"}
        if action in transitions:
            return self._v4_mutation(
                request,
                vm_id,
                lambda rid: self.state.power(vm_id, transitions[action], request_id=rid),
            )
        raise ApiError(404, f"no action {action}")

    def _v4_update(self, request: Request, vm_id: str) -> Response:
        body = self._body(request)
        affinity = body.get("hostAffinity") or {}
        try:
            hosts = [str(h["extId"]) for h in affinity.get("hosts", [])]
        except (TypeError, KeyError, AttributeError):
            raise ApiError(400, "hostAffinity.hosts[].extId is required") from None
        return self._v4_mutation(
            request, vm_id, lambda rid: self.state.place(vm_id, hosts, request_id=rid)
        )

    # ---- v2.0 ---------------------------------------------------------------------------
    def _v2_host(self, h: FakeHost) -> dict[str, Any]:
        return {
            "uuid": h.id,
            "name": h.name,
            "cluster_uuid": h.cluster,
            "state": "NORMAL",
            "host_in_maintenance_mode": h.maintenance,
            "memory_capacity_in_bytes": h.memory,
            "num_cpu_cores": h.cpus // 2,
            "num_cpu_threads": h.cpus,
        }

    def _v2_vm_doc(self, vm: FakeVM) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "uuid": vm.id,
            "name": vm.name,
            "power_state": vm.power.lower(),
            "memory_mb": vm.memory >> 20,
            "num_vcpus": vm.vcpus,
            "num_cores_per_vcpu": 1,
            "cluster_uuid": vm.cluster,
            "allow_live_migrate": vm.live_migrate,
            "gpus_assigned": [{"mode": "PASSTHROUGH"}] * vm.gpus,
        }
        if vm.shown_host():
            doc["host_uuid"] = vm.shown_host()
        if vm.affinity:
            doc["affinity"] = {"policy": "AFFINITY", "host_uuids": list(vm.affinity)}
        return doc

    def _v2_task_doc(self, t: FakeTask) -> dict[str, Any]:
        status = {"QUEUED": "Queued", "RUNNING": "Running"}.get(t.status, t.status.title())
        entities = [{"entity_id": t.vm, "entity_type": "VM"}]
        if t.target:
            entities.append({"entity_id": t.target, "entity_type": "Host"})
        doc: dict[str, Any] = {
            "uuid": t.id,
            "operation_type": t.operation,
            "progress_status": status,
            "percentage_complete": t.percent,
            "entity_list": entities,
            "create_time_usecs": int(t.wall * 1e6),
            "meta_request": {"method_name": t.operation},
        }
        if t.finished is not None:
            doc["complete_time_usecs"] = int(self.state.wall(t.finished) * 1e6)
        if t.error:
            doc["meta_response"] = {"error_code": 1, "error_detail": t.error}
        return doc

    def _v2_list(self, request: Request, docs: list[Any]) -> Response:
        page, total = self._page(request, docs, v4=False)
        meta = {"grand_total_entities": total, "total_entities": total, "count": len(page)}
        return self._json({"metadata": meta, "entities": page})

    def _v2_hosts(self, request: Request) -> Response:
        with self.state.lock:
            return self._v2_list(request, [self._v2_host(h) for h in self.state.hosts.values()])

    def _v2_vms(self, request: Request) -> Response:
        with self.state.lock:
            self.state.tick()
            return self._v2_list(request, [self._v2_vm_doc(v) for v in self.state.vms.values()])

    def _v2_vm(self, request: Request, vm_id: str) -> Response:
        with self.state.lock:
            return self._json(self._v2_vm_doc(self.state.read_vm(vm_id)))

    def _v2_task_ref(self, task: FakeTask) -> Response:
        return self._json({"task_uuid": task.id}, 201)

    def _v2_migrate(self, request: Request, vm_id: str) -> Response:
        host = self._body(request).get("host_uuid")
        if not isinstance(host, str):
            raise ApiError(400, "host_uuid is required")
        return self._v2_task_ref(self.state.migrate(vm_id, host))

    def _v2_power(self, request: Request, vm_id: str) -> Response:
        transition = self._body(request).get("transition")
        if not isinstance(transition, str):
            raise ApiError(400, "transition is required")
        return self._v2_task_ref(self.state.power(vm_id, transition))

    def _v2_update(self, request: Request, vm_id: str) -> Response:
        affinity = self._body(request).get("affinity") or {}
        hosts = affinity.get("host_uuids") if isinstance(affinity, dict) else None
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ApiError(400, "affinity.host_uuids is required")
        return self._v2_task_ref(self.state.place(vm_id, hosts))

    def _v2_task(self, request: Request, task_id: str) -> Response:
        with self.state.lock:
            self.state.tick()
            task = self.state.tasks.get(task_id)
            if task is None:
                raise ApiError(404, f"task {task_id} not found")
            return self._json(self._v2_task_doc(task))

    def _v2_task_list(self, request: Request) -> Response:
        body = self._body(request)
        entities = {
            e.get("entity_id") for e in body.get("entity_list") or [] if isinstance(e, dict)
        }
        operations = set(body.get("operation_type_list") or [])
        with self.state.lock:
            self.state.tick()
            tasks = [
                self._v2_task_doc(t)
                for t in sorted(self.state.tasks.values(), key=lambda t: t.created)
                if (not entities or t.vm in entities)
                and (not operations or t.operation in operations)
                and (body.get("include_completed", True) or not t.done)
            ]
        return self._json({"metadata": {"total_entities": len(tasks)}, "entities": tasks})


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")
