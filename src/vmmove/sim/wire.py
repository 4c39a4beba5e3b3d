"""JSON forms of what crosses between the simulator server and its clients (``sim+http``):
the backend contract's types, and vmmove's errors by class name."""

from __future__ import annotations

import dataclasses
from typing import Any

from vmmove import errors
from vmmove.backend import Job, JobRef, JobStatus, Reservation
from vmmove.machine import Phase
from vmmove.model import (
    Capacity,
    CpuInfo,
    Figures,
    HostInfo,
    HostState,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    Storage,
    VMInfo,
)


def host_out(h: HostInfo) -> dict[str, Any]:
    return {
        "id": h.id,
        "name": h.name,
        "cluster": h.cluster,
        "state": h.state.value,
        "capacity": [h.capacity.cpus, h.capacity.memory],
        "allocated": [h.allocated.cpus, h.allocated.memory],
        "cpu": [h.cpu.arch, h.cpu.model, h.cpu.vendor, sorted(h.cpu.features)],
        "extra": dict(h.extra),
    }


def host_in(d: dict[str, Any]) -> HostInfo:
    arch, model, vendor, features = d["cpu"]
    return HostInfo(
        id=d["id"],
        name=d["name"],
        cluster=d["cluster"],
        state=HostState(d["state"]),
        capacity=Capacity(cpus=d["capacity"][0], memory=d["capacity"][1]),
        allocated=Capacity(cpus=d["allocated"][0], memory=d["allocated"][1]),
        cpu=CpuInfo(arch=arch, model=model, vendor=vendor, features=frozenset(features)),
        extra=d["extra"],
    )


def vm_out(v: VMInfo) -> dict[str, Any]:
    return {
        "id": v.id,
        "name": v.name,
        "host": v.host,
        "power": v.power.value,
        "memory": v.memory,
        "vcpus": v.vcpus,
        "storage": v.storage.value,
        "live_migratable": v.live_migratable,
        "not_migratable_reason": v.not_migratable_reason,
        "dirty_rate": v.dirty_rate,
        "extra": dict(v.extra),
    }


def vm_in(d: dict[str, Any]) -> VMInfo:
    return VMInfo(**{**d, "power": PowerState(d["power"]), "storage": Storage(d["storage"])})


def spec_out(s: MigrationSpec) -> dict[str, Any]:
    # The simulator reads none of the policy: the engine resolved it already.
    return {
        "vm": s.vm,
        "target": s.target,
        "mode": s.mode.value,
        "bandwidth": s.bandwidth,
        "max_downtime": s.max_downtime,
        "datastore": s.datastore,
    }


def spec_in(d: dict[str, Any]) -> MigrationSpec:
    return MigrationSpec(**{**d, "mode": MigrationMode(d["mode"])})


def ref_out(r: JobRef) -> dict[str, str]:
    return r.dump()


def job_out(j: Job) -> dict[str, Any]:
    return {
        "id": j.id,
        "vm": j.vm,
        "source": j.source,
        "target": j.target,
        "mode": j.mode.value,
        "ref": j.ref.dump(),
    }


def job_in(d: dict[str, Any]) -> Job:
    return Job(
        id=d["id"],
        vm=d["vm"],
        source=d["source"],
        target=d["target"],
        mode=MigrationMode(d["mode"]),
        ref=JobRef.load(d["ref"]),
    )


def status_out(s: JobStatus) -> dict[str, Any]:
    f = s.figures
    return {
        "phase": s.phase.value,
        "native": s.native,
        "data_total": s.data_total,
        "data_processed": s.data_processed,
        "data_remaining": s.data_remaining,
        "transfer_rate": s.transfer_rate,
        "dirty_rate": s.dirty_rate,
        "iteration": s.iteration,
        "expected_downtime_ms": s.expected_downtime_ms,
        "throttle": s.throttle,
        "percent": s.percent,
        "vm_host": s.vm_host,
        "error": s.error,
        "figures": None if f is None else [f.total_time, f.downtime_ms, f.data_sent, f.iterations],
        "postcopy": s.postcopy,
        "next_poll": s.next_poll,
    }


_STATUS_FIELDS = frozenset(f.name for f in dataclasses.fields(JobStatus))


def status_in(d: dict[str, Any]) -> JobStatus:
    f = d["figures"]
    figures = (
        None
        if f is None
        else Figures(total_time=f[0], downtime_ms=f[1], data_sent=f[2], iterations=f[3])
    )
    fields = {k: v for k, v in d.items() if k in _STATUS_FIELDS}  # not a newer server's extras
    return JobStatus(**{**fields, "phase": Phase(d["phase"]), "figures": figures})


def reservation_out(r: Reservation | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"id": r.id, "host": r.host, "memory": r.memory, "cpus": r.cpus}


def reservation_in(d: dict[str, Any] | None) -> Reservation | None:
    return None if d is None else Reservation(**d)


def problems_out(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"code": p.code, "message": p.message, "severity": p.severity} for p in problems]


def problems_in(items: list[dict[str, Any]]) -> list[Problem]:
    return [Problem(**p) for p in items]


def error_out(exc: errors.VMMoveError) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


def error_in(d: dict[str, str]) -> errors.VMMoveError:
    kind = getattr(errors, d.get("type", ""), None)
    message = d.get("message", "")
    if isinstance(kind, type) and issubclass(kind, errors.VMMoveError):
        try:
            return kind(message)
        except TypeError:  # an error class with more arguments (PrecheckFailed)
            pass
    return errors.BackendProtocolError(f"simulator server: {d.get('type')}: {message}")
