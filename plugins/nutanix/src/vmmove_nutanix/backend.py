"""The Nutanix AHV backend: Prism's inventory, tasks and power actions mapped onto vmmove.

A live migration is one Prism task (v4 ``migrate-to-host``, v2.0 ``migrate``), polled for
its status and percentage. It cannot be cancelled: the capabilities say so and ``abort``
refuses. A cold move is the core's: ``power_off`` (ACPI shutdown, or a hard power-off),
``relocate`` (pin the stopped VM to the target host with VM-host affinity: AHV starts a
stopped VM where its affinity allows), ``power_on``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from vmmove.backend import Backend, Intent, Job, JobRef, JobStatus, Reservation
from vmmove.errors import Conflict, ConnectionFailed, InvalidInput, NotFound, NotSupported
from vmmove.machine import Phase
from vmmove.model import (
    Capacity,
    Figures,
    HostInfo,
    HostState,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    VMInfo,
)
from vmmove.policy import Policy
from vmmove.secrets import Secret
from vmmove_nutanix.api import discover
from vmmove_nutanix.capabilities import CAPABILITIES
from vmmove_nutanix.http import PrismHttp
from vmmove_nutanix.parse import NativeHost, NativeVM
from vmmove_nutanix.phases import phase_of
from vmmove_nutanix.watcher import TaskWatcher

__all__ = ["NO_CANCEL", "NutanixBackend"]

log = logging.getLogger("vmmove.nutanix")

NO_CANCEL = "Nutanix migrate tasks cannot be cancelled (isCancelable: false)"
_POWER = {"on": PowerState.RUNNING, "off": PowerState.STOPPED, "paused": PowerState.PAUSED}


class NutanixBackend(Backend):
    scheme = "nutanix"
    cancel_refusal = NO_CANCEL
    capabilities = CAPABILITIES

    def __init__(self, uri: str, options: Mapping[str, Any]) -> None:
        try:
            parts = urlsplit(uri)
            port = parts.port or 9440
        except ValueError as exc:
            raise InvalidInput(f"malformed nutanix URI: {exc}") from None
        if parts.scheme not in ("nutanix", "nutanix+v2"):
            raise InvalidInput(f"{parts.scheme}:// is not nutanix:// or nutanix+v2://")
        if parts.password is not None:
            raise InvalidInput(
                "the URI holds a password; give it as the password option (it would be logged)"
            )
        if not parts.hostname:
            raise InvalidInput("a nutanix URI names the Prism server: nutanix://HOST[:PORT]")
        page_size = int(options["page_size"])
        if not 1 <= page_size <= 100:
            raise InvalidInput(f"option page_size wants 1 to 100, not {page_size}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        password = options.get("password")
        ca_file = options.get("ca_file")
        self.uri = f"{parts.scheme}://{host}:{port}"
        self.poll_interval = float(options["poll_interval"])
        self._skew = float(options["clock_skew"])
        self._http = PrismHttp(
            f"https://{host}:{port}",
            user=unquote(parts.username) if parts.username else str(options["user"]),
            password=password if isinstance(password, Secret) else None,
            ca_file=Path(ca_file) if ca_file is not None else None,
            insecure=bool(options["insecure"]),
            timeout=float(options["timeout"]),
        )
        try:
            self.api = discover(
                self._http, v2_only=parts.scheme == "nutanix+v2", page_size=page_size
            )
        except BaseException:
            self._http.close()
            raise
        self._lock = threading.Lock()
        self._high: dict[str, float] = {}  # job -> highest percentage reported
        self._timeout = float(options["timeout"])
        self._watcher = TaskWatcher(
            self.api.task,
            self.locate,
            lambda t: phase_of(t.status, v4=self.v4, percent=t.percent)[0].terminal,
            interval=self.poll_interval,
        )

    def __repr__(self) -> str:
        return f"NutanixBackend({self.uri!r}, api={self.api.version!r})"

    @property
    def v4(self) -> bool:
        return self.api.version != "v2.0"

    # ---- inventory --------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        natives = self.api.hosts()
        used: dict[str, tuple[int, int]] = {}
        for vm in self.api.vms():
            if vm.power == "on" and vm.host:
                cpus, memory = used.get(vm.host, (0, 0))
                used[vm.host] = (cpus + vm.vcpus, memory + vm.memory)
        return [self._host_info(h, used.get(h.id, (0, 0))) for h in natives]

    def _host_info(self, h: NativeHost, used: tuple[int, int]) -> HostInfo:
        return HostInfo(
            id=h.id,
            name=h.name,
            cluster=h.cluster,
            state=HostState.MAINTENANCE if h.maintenance else HostState.UP,
            capacity=Capacity(cpus=h.cpus, memory=h.memory),
            allocated=Capacity(cpus=used[0], memory=used[1]),
            extra={"state": h.state, "api": self.api.version},
        )

    def vms(self) -> list[VMInfo]:
        return [self._vm_info(vm) for vm in self.api.vms()]

    def _vm_info(self, vm: NativeVM) -> VMInfo:
        reason = None
        if vm.gpus:
            reason = f"{vm.gpus} GPU(s) passed through"
        elif not vm.live_migrate:
            reason = "live migration is not allowed for this VM"
        extra = {"cluster": vm.cluster, "power_state": vm.power}
        if vm.affinity:
            extra["host_affinity"] = ",".join(vm.affinity)
        return VMInfo(
            id=vm.id,
            name=vm.name,
            host=vm.host or "",
            power=_POWER.get(vm.power, PowerState.PAUSED),
            memory=vm.memory,
            vcpus=vm.vcpus,
            live_migratable=reason is None,
            not_migratable_reason=reason,
            extra=extra,
        )

    def vm(self, ref: str) -> VMInfo:
        try:
            return self._vm_info(self.api.vm(ref))
        except (NotFound, InvalidInput):
            pass  # not an id: a name
        named = self.api.vms_named(ref)
        if len(named) == 1:
            return self._vm_info(named[0])
        raise NotFound(f"no VM {ref!r}" if not named else f"VM name {ref!r} is ambiguous")

    def locate(self, vm_id: str) -> str | None:
        try:
            return self.api.vm(vm_id).host
        except NotFound:
            return None

    # ---- pre-checks -------------------------------------------------------------------
    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        native = self.api.vm(vm.id)
        problems: list[Problem] = []
        if native.cluster and target.cluster and native.cluster != target.cluster:
            problems.append(
                Problem(
                    code="other-cluster",
                    message=f"{target.name} is in another cluster "
                    f"than {vm.name}: AHV moves VMs within their cluster only",
                )
            )
        if target.state is HostState.MAINTENANCE:
            problems.append(
                Problem(code="host-maintenance", message=f"{target.name} is in maintenance mode")
            )
        if target.free_memory < native.memory and mode is MigrationMode.LIVE:
            problems.append(
                Problem(
                    code="capacity",
                    message=f"{target.name} has "
                    f"{target.free_memory >> 20} MiB free; {vm.name} needs "
                    f"{native.memory >> 20} MiB",
                )
            )
        names = {h.id: h.name for h in self.api.hosts()} if native.affinity else {}
        allowed = ", ".join(names.get(h, h) for h in native.affinity)
        if mode is MigrationMode.LIVE:
            if native.power != "on":
                problems.append(
                    Problem(
                        code="not-running",
                        message=f"{vm.name} is powered "
                        f"{native.power}: only a running VM moves live",
                    )
                )
            if native.gpus:
                problems.append(
                    Problem(
                        code="gpu",
                        message=f"{vm.name} has {native.gpus} GPU(s) "
                        "passed through: AHV cannot live-migrate it",
                    )
                )
            elif not native.live_migrate:
                problems.append(
                    Problem(
                        code="live-migrate-disallowed",
                        message=f"{vm.name} does not "
                        "allow live migration (allow_live_migrate / isLiveMigrateCapable)",
                    )
                )
            if native.affinity and target.id not in native.affinity:
                problems.append(
                    Problem(
                        code="vm-host-affinity",
                        message=f"the VM-host affinity of "
                        f"{vm.name} allows only {allowed}: not {target.name}",
                    )
                )
        elif native.affinity and target.id not in native.affinity:
            problems.append(
                Problem(
                    severity="warning",
                    code="vm-host-affinity",
                    message=f"the cold "
                    f"move replaces {vm.name}'s VM-host affinity ({allowed}) with "
                    f"{target.name}",
                )
            )
        return problems

    # ---- live migration ---------------------------------------------------------------
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
        if mode is not MigrationMode.LIVE:
            raise NotSupported("a cold Nutanix move goes through power_off/relocate/power_on")

        def recheck(now: NativeVM) -> None:
            # the VM as Prism has it right before the request (and again after a 412)
            if now.power != "on":
                raise Conflict(f"{vm.name} is powered {now.power} now: not moving it live")
            if now.host == target.id:
                raise Conflict(f"{vm.name} already runs on {target.name}")

        task = self.api.migrate(vm.id, target.id, request_id or _rid(), recheck)
        return self._job(task, vm.id, vm.host, target.id, MigrationMode.LIVE)

    def _job(self, task: str, vm: str, source: str, target: str, mode: MigrationMode) -> Job:
        self._watcher.watch(task, vm)
        data = {
            "task": task,
            "vm": vm,
            "source": source,
            "target": target,
            "mode": mode.value,
            "api": self.api.version,
        }
        return Job(id=task, vm=vm, source=source, target=target, mode=mode, ref=JobRef(data=data))

    def poll(self, job: Job) -> JobStatus:
        """At once, from the watcher's latest read of the task."""
        self._watcher.watch(job.id, job.vm)
        sample = self._watcher.latest(job.id)
        if sample is None or (sample.task is None and sample.error is None):
            # accepted a moment ago, not read yet: Prism queues every task first
            return JobStatus(phase=Phase.REQUESTING, native="QUEUED (not read yet)")
        age = time.monotonic() - sample.at
        if sample.error is not None:
            raise sample.error
        if age > self._timeout + 3 * self.poll_interval + 1.0:
            raise ConnectionFailed(f"no answer from Prism about task {job.id} for {age:.0f} s")
        task = sample.task
        assert task is not None
        phase, native = phase_of(task.status, v4=self.v4, percent=task.percent)
        with self._lock:
            percent = max(self._high.get(job.id, 0.0), task.percent or 0.0)
            if phase is Phase.COMPLETED:
                percent = 100.0
            self._high[job.id] = percent
        if not phase.terminal:
            return JobStatus(phase=phase, native=native, percent=percent)
        total = None
        if task.created is not None and task.completed is not None:
            total = max(0.0, task.completed - task.created)
        error = None
        if phase is not Phase.COMPLETED:
            error = task.error or f"the Prism task ended {task.status}"
        return JobStatus(
            phase=phase,
            native=native,
            percent=percent,
            vm_host=sample.vm_host,  # the VM's host, read once the task had ended
            error=error,
            figures=Figures(total_time=total),
        )

    def abort(self, job: Job) -> None:
        raise NotSupported(f"{NO_CANCEL}: the migration goes on")

    def finish(self, job: Job) -> None:
        with self._lock:
            self._high.pop(job.id, None)
        self._watcher.forget(job.id)

    def attach(self, ref: JobRef) -> Job:
        if ref.intent is Intent.START:
            task = self.api.find_start(ref, self._skew)
            if task is None:
                raise NotFound(f"Prism shows no task for request {ref.request_id}")
            mode = ref.mode or MigrationMode.LIVE
            return self._job(task, ref.vm, "", ref.target, mode)
        task = ref.get("task")
        if not task:
            raise NotFound("the saved reference names no Prism task")
        self.api.task(task)  # it exists (NotFound otherwise)
        try:
            mode = MigrationMode(ref.get("mode", "live"))
        except ValueError:
            raise InvalidInput(f"saved mode {ref.get('mode')!r} is not a migration mode") from None
        return self._job(task, ref.get("vm"), ref.get("source"), ref.get("target"), mode)

    # ---- cold migration primitives ----------------------------------------------------
    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        if self.api.vm(vm.id).power == "off":
            return  # AHV refuses to power off a VM that is off: nothing to do
        self.api.power(vm.id, "OFF" if force else "ACPI_SHUTDOWN", _rid())

    def power_on(self, vm: VMInfo) -> None:
        self.api.power(vm.id, "ON", _rid())

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        if self.api.vm(vm.id).power == "on":
            raise Conflict(f"{vm.name} is running: only a stopped VM is relocated")
        task = self.api.place(vm.id, target.id, request_id or _rid())
        return self._job(task, vm.id, vm.host, target.id, MigrationMode.COLD)

    def close(self) -> None:
        self._watcher.stop()
        self._http.close()


def _rid() -> str:
    return uuid.uuid4().hex
