"""A third-party backend in one file, as small as the protocol allows.

Each poll moves a job one native step along ``queued -> copying(0..100) -> switching ->
done``. It exists to prove that an outside plugin is found through its entry point and
passes the same contract as the built-in simulator.
"""

from __future__ import annotations

import itertools
from typing import Any

import vmmove
from vmmove import (
    Backend,
    Capabilities,
    Capacity,
    HostInfo,
    Intent,
    Job,
    JobRef,
    JobStatus,
    MigrationMode,
    NotFound,
    Phase,
    PowerState,
    ReservationRefused,
    VMInfo,
)
from vmmove.clock import VirtualClock

_NATIVE = {
    "queued": Phase.REQUESTING,
    "copying": Phase.TRANSFERRING,
    "switching": Phase.SWITCHING_OVER,
    "done": Phase.COMPLETED,
    "aborted": Phase.CANCELLED,
}


class TinyBackend(Backend):
    scheme = "tiny"
    capabilities = Capabilities(live=True, cold=True, cancel=True, reserve=True)
    poll_interval = 1.0

    def __init__(self) -> None:
        self._clock = VirtualClock()
        self._hosts = {
            n: HostInfo(id=n, name=n, capacity=Capacity(cpus=8, memory=16 << 30))
            for n in ("t1", "t2")
        }
        self._vms = {
            "alpha": ["t1", PowerState.RUNNING],
            "beta": ["t1", PowerState.STOPPED],
        }
        self._jobs: dict[str, dict[str, Any]] = {}
        self._requests: dict[str, str] = {}  # start request id -> job id
        self._ids = itertools.count(1)
        self.refuse: set[tuple[str, str]] = set()

    @property
    def clock(self) -> VirtualClock:
        return self._clock

    def hosts(self) -> list[HostInfo]:
        return list(self._hosts.values())

    def vms(self) -> list[VMInfo]:
        return [
            VMInfo(id=k, name=k, host=h, power=p, memory=1 << 30, vcpus=1)
            for k, (h, p) in self._vms.items()
        ]

    def reserve(self, vm, target, spec):  # type: ignore[no-untyped-def]
        if (vm.id, target.id) in self.refuse:
            raise ReservationRefused(f"{target.id} is full")

    def start(self, vm, target, spec, mode, *, policy, needs, reservation, request_id=""):  # type: ignore[no-untyped-def]
        job_id = f"tiny-{next(self._ids)}"
        self._jobs[job_id] = {
            "state": "queued",
            "pct": 0,
            "vm": vm.id,
            "target": target.id,
            "abort": False,
        }
        self._requests[request_id] = job_id
        return Job(
            id=job_id,
            vm=vm.id,
            source=vm.host,
            target=target.id,
            mode=mode,
            ref=JobRef(data={"job": job_id}),
        )

    def poll(self, job: Job) -> JobStatus:
        j = self._jobs[job.id]
        if j["abort"] and j["state"] in ("queued", "copying"):
            j["state"] = "aborted"
        elif j["state"] == "queued":
            j["state"] = "copying"
        elif j["state"] == "copying":
            j["pct"] += 25
            if j["pct"] >= 100:
                j["state"] = "switching"
        elif j["state"] == "switching":
            j["state"] = "done"
            self._vms[j["vm"]][0] = j["target"]
        phase = _NATIVE[j["state"]]
        host = self._vms[j["vm"]][0] if phase.terminal else None
        return JobStatus(phase=phase, native=j["state"], percent=j["pct"], vm_host=host)

    def abort(self, job: Job) -> None:
        self._jobs[job.id]["abort"] = True

    def attach(self, ref: JobRef) -> Job:
        # A start whose answer was lost: the request id names the job it began.
        if ref.intent is Intent.START:
            job_id = self._requests.get(ref.request_id, "")
        else:
            job_id = ref.get("job")
        if job_id not in self._jobs:
            raise NotFound(f"no tiny job for {ref}")
        j = self._jobs[job_id]
        vm = self._vms[j["vm"]]
        return Job(
            id=job_id,
            vm=j["vm"],
            source=vm[0],
            target=j["target"],
            mode=MigrationMode.LIVE,
            ref=JobRef(data={"job": job_id}),
        )


@vmmove.hookimpl
def vmmove_add_backends(registry: Any) -> None:
    registry.add("tiny", lambda uri, options: TinyBackend(), description="tiny test backend")
