"""The fake Prism's estate: hosts, VMs and tasks that progress with the fake's clock.

One in-memory cluster seen through both API generations (the web layer in
:mod:`vmmove_nutanix.testing.app` renders it as v4 or v2.0). Tasks are computed from the
clock whenever the estate is read, so a test that drives a :class:`ManualClock` decides
exactly when a migration ends; the standalone server runs on real time.

What it models, as Prism does: a VM's ETag changes on every update; a v4 action with an
``NTNX-Request-Id`` seen before answers what it answered then and acts no more; a migrate
task cannot be cancelled; a stopped VM runs nowhere and starts on the host its VM-host
affinity names (else where it last ran).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ApiError",
    "FakeHost",
    "FakeTask",
    "FakeVM",
    "ManualClock",
    "PrismState",
    "TaskTiming",
]

GiB = 1 << 30
_NS = uuid.UUID("6f1c3e52-9a0d-4c59-8d0e-0b7a1f1e4c11")


def stable_id(name: str) -> str:
    """A UUID that stays the same for a name across runs (readable tests, stable docs)."""
    return str(uuid.uuid5(_NS, name))


class ManualClock:
    """A clock that moves only when told: tests drive tasks with :meth:`advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class TaskTiming:
    """Seconds of the fake's clock each kind of task spends queued and running."""

    queued: float = 0.5
    migrate: float = 5.0
    power: float = 0.5
    shutdown: float = 2.0  # ACPI: the guest takes its time
    place: float = 0.5


class ApiError(Exception):
    """A refusal the web layer turns into an HTTP error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class FakeHost:
    id: str
    name: str
    cluster: str
    memory: int
    cpus: int
    maintenance: bool = False


@dataclass
class FakeVM:
    id: str
    name: str
    cluster: str
    memory: int
    vcpus: int
    power: str  # "ON" | "OFF"
    host: str | None  # where it runs (ON); where it last ran (OFF, never shown)
    affinity: list[str] = field(default_factory=list)
    live_migrate: bool = True
    gpus: int = 0
    ignores_acpi: bool = False  # a guest without ACPI support never shuts down
    version: int = 1

    @property
    def etag(self) -> str:
        return f'"{uuid.uuid5(_NS, f"{self.id}/{self.version}").hex[:16]}"'

    def touch(self) -> None:
        self.version += 1

    def shown_host(self) -> str | None:
        return self.host if self.power == "ON" else None


@dataclass
class FakeTask:
    id: str
    operation: str  # VmMigrate, VmPowerOn, VmPowerOff, VmShutdown, VmUpdate
    vm: str
    target: str | None
    created: float  # the fake's clock
    wall: float  # seconds since the epoch when created (Prism's clock)
    queued: float
    duration: float
    effect: Callable[[], None]
    fail: str | None = None
    request_id: str = ""
    status: str = "QUEUED"
    percent: int = 0
    error: str | None = None
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED")


class PrismState:
    """The estate behind the fake Prism. Thread-safe: every method takes the lock."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, timing: TaskTiming | None = None
    ) -> None:
        self.clock = clock or time.monotonic
        self.timing = timing or TaskTiming()
        self.lock = threading.RLock()
        self.hosts: dict[str, FakeHost] = {}
        self.vms: dict[str, FakeVM] = {}
        self.tasks: dict[str, FakeTask] = {}
        #: v4 idempotency: request id -> (HTTP status, body) of the accepted action
        self.requests: dict[str, tuple[int, dict[str, Any]]] = {}
        self._fail_next: dict[tuple[str, str], str] = {}
        self._epoch = time.time() - self.clock()

    # ---- building an estate -----------------------------------------------------------
    def add_host(
        self,
        name: str,
        *,
        cluster: str = "cluster-1",
        memory: int = 64 * GiB,
        cpus: int = 32,
        maintenance: bool = False,
    ) -> FakeHost:
        with self.lock:
            host = FakeHost(stable_id(name), name, stable_id(cluster), memory, cpus, maintenance)
            self.hosts[host.id] = host
            return host

    def add_vm(
        self,
        name: str,
        host: str,
        *,
        power: str = "ON",
        memory: int = 2 * GiB,
        vcpus: int = 2,
        affinity: tuple[str, ...] = (),
        live_migrate: bool = True,
        gpus: int = 0,
    ) -> FakeVM:
        with self.lock:
            placed = self.host_named(host)
            vm = FakeVM(
                id=stable_id(name),
                name=name,
                cluster=placed.cluster,
                memory=memory,
                vcpus=vcpus,
                power=power,
                host=placed.id,
                affinity=[self.host_named(a).id for a in affinity],
                live_migrate=live_migrate,
                gpus=gpus,
            )
            self.vms[vm.id] = vm
            return vm

    def sample(self) -> None:
        """Three hosts (node-c in maintenance) and five VMs, in one cluster."""
        for name in ("node-a", "node-b"):
            self.add_host(name)
        self.add_host("node-c", maintenance=True)
        self.add_vm("web-1", "node-a")
        self.add_vm("db-1", "node-a", memory=8 * GiB, vcpus=4)
        self.add_vm("batch-1", "node-a", power="OFF", affinity=("node-a",))
        self.add_vm("gpu-1", "node-b", gpus=1, live_migrate=False)
        self.add_vm("pinned-1", "node-b", affinity=("node-b",))

    def host_named(self, ref: str) -> FakeHost:
        for host in self.hosts.values():
            if ref in (host.id, host.name):
                return host
        raise KeyError(ref)

    def vm_named(self, ref: str) -> FakeVM:
        with self.lock:
            for vm in self.vms.values():
                if ref in (vm.id, vm.name):
                    return vm
        raise KeyError(ref)

    # ---- test switches ----------------------------------------------------------------
    def fail_next(self, vm: str, operation: str, message: str = "injected failure") -> None:
        """The next ``operation`` task (VmMigrate, VmUpdate, VmPowerOn...) of ``vm`` fails."""
        with self.lock:
            self._fail_next[(self.vm_named(vm).id, operation)] = message

    def read_vm(self, vm_id: str) -> FakeVM:
        """A VM as one GET sees it, tasks brought up to the clock."""
        with self.lock:
            self.tick()
            return self._vm(vm_id)

    def migrations(self, vm: str) -> list[FakeTask]:
        with self.lock:
            vm_id = self.vm_named(vm).id
            return [t for t in self.tasks.values() if t.vm == vm_id and t.operation == "VmMigrate"]

    # ---- time -------------------------------------------------------------------------
    def wall(self, at: float) -> float:
        """Prism's wall-clock time for an instant of the fake's clock."""
        return self._epoch + at

    def tick(self) -> None:
        """Bring every task up to the clock, applying the effects of those that ended."""
        with self.lock:
            now = self.clock()
            for task in sorted(self.tasks.values(), key=lambda t: t.created):
                if task.done:
                    continue
                begun = task.created + task.queued
                if now < begun:
                    continue
                end = begun + task.duration
                if now < end:
                    task.status = "RUNNING"
                    share = (now - begun) / task.duration if task.duration else 1.0
                    task.percent = max(task.percent, min(99, int(share * 100)))
                    continue
                task.finished = end
                if task.fail is not None:
                    task.status, task.error = "FAILED", task.fail
                    continue
                try:
                    task.effect()
                except ApiError as exc:  # the world changed under the task
                    task.status, task.error = "FAILED", exc.message
                    continue
                task.status, task.percent = "SUCCEEDED", 100

    # ---- actions ------------------------------------------------------------------------
    def _vm(self, vm_id: str) -> FakeVM:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise ApiError(404, f"VM {vm_id} not found")
        return vm

    def _task(
        self,
        operation: str,
        vm: FakeVM,
        duration: float,
        effect: Callable[[], None],
        *,
        target: str | None = None,
        request_id: str = "",
    ) -> FakeTask:
        now = self.clock()
        task = FakeTask(
            id=str(uuid.uuid4()),
            operation=operation,
            vm=vm.id,
            target=target,
            created=now,
            wall=self.wall(now),
            queued=self.timing.queued,
            duration=duration,
            effect=effect,
            fail=self._fail_next.pop((vm.id, operation), None),
            request_id=request_id,
        )
        self.tasks[task.id] = task
        return task

    def _busy(self, vm: FakeVM) -> bool:
        return any(t.vm == vm.id and not t.done for t in self.tasks.values())

    def _migrating(self, vm: FakeVM) -> bool:
        return any(
            t.vm == vm.id and not t.done and t.operation == "VmMigrate" for t in self.tasks.values()
        )

    def migrate(self, vm_id: str, host_id: str, *, request_id: str = "") -> FakeTask:
        with self.lock:
            self.tick()
            vm = self._vm(vm_id)
            target = self.hosts.get(host_id)
            if target is None:
                raise ApiError(404, f"host {host_id} not found")
            if vm.power != "ON":
                raise ApiError(409, f"VM {vm.name} is not powered on: cannot live-migrate")
            if self._busy(vm):
                raise ApiError(409, f"VM {vm.name} has a task in progress")
            if vm.host == target.id:
                raise ApiError(400, f"VM {vm.name} already runs on {target.name}")
            if target.cluster != vm.cluster:
                raise ApiError(400, f"host {target.name} is in another cluster")
            if target.maintenance:
                raise ApiError(409, f"host {target.name} is in maintenance mode")
            if not vm.live_migrate or vm.gpus:
                raise ApiError(409, f"VM {vm.name} is not live-migratable")
            if vm.affinity and target.id not in vm.affinity:
                raise ApiError(409, f"VM {vm.name}'s host affinity excludes {target.name}")
            source = vm.host

            def arrive() -> None:
                if vm.power != "ON" or vm.host != source:
                    raise ApiError(409, f"VM {vm.name} changed during the migration")
                vm.host = target.id
                vm.touch()

            return self._task(
                "VmMigrate",
                vm,
                self.timing.migrate,
                arrive,
                target=target.id,
                request_id=request_id,
            )

    def power(self, vm_id: str, transition: str, *, request_id: str = "") -> FakeTask:
        """``transition``: ON, OFF (hard) or ACPI_SHUTDOWN."""
        with self.lock:
            self.tick()
            vm = self._vm(vm_id)
            if self._migrating(vm):
                raise ApiError(409, f"VM {vm.name} is migrating")

            def on() -> None:
                if vm.power == "ON":
                    return
                if vm.affinity and vm.host not in vm.affinity:
                    vm.host = vm.affinity[0]
                vm.power = "ON"
                vm.touch()

            def off() -> None:
                if vm.power == "OFF":
                    return
                vm.power = "OFF"
                vm.touch()

            def shutdown() -> None:
                if not vm.ignores_acpi:
                    off()

            if transition == "ON":
                return self._task("VmPowerOn", vm, self.timing.power, on, request_id=request_id)
            if transition == "OFF":
                return self._task("VmPowerOff", vm, self.timing.power, off, request_id=request_id)
            if transition == "ACPI_SHUTDOWN":
                return self._task(
                    "VmShutdown", vm, self.timing.shutdown, shutdown, request_id=request_id
                )
            raise ApiError(400, f"unknown power transition {transition!r}")

    def place(self, vm_id: str, hosts: list[str], *, request_id: str = "") -> FakeTask:
        """Set the VM's host affinity (a VM update task)."""
        with self.lock:
            self.tick()
            vm = self._vm(vm_id)
            for host in hosts:
                if host not in self.hosts:
                    raise ApiError(404, f"host {host} not found")
            if self._migrating(vm):  # other VM tasks queue behind each other, as in AHV
                raise ApiError(409, f"VM {vm.name} is migrating")
            if vm.power == "ON" and hosts and vm.host not in hosts:
                raise ApiError(409, f"VM {vm.name} runs outside the affinity asked for")

            def pin() -> None:
                vm.affinity = list(hosts)
                vm.touch()

            return self._task(
                "VmUpdate",
                vm,
                self.timing.place,
                pin,
                target=hosts[0] if hosts else None,
                request_id=request_id,
            )
