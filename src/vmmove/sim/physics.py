"""Pre-copy physics, event-driven per host link.

A live job walks: setup -> precopy passes -> stopcopy (or postcopy) -> cleanup -> completed.
Pass 1 sends the VM's resident memory; each later pass sends what the guest dirtied during
the previous one, ``min(working_set, dirty_rate * (1 - throttle) * pass_time)``. At the end
of a pass the job switches over once ``pending / rate <= downtime_limit`` (as QEMU decides,
at the capped pre-copy rate); the stop-and-copy itself runs uncapped at the link's speed,
so the real pause is shorter than the limit allowed. Auto-converge throttles the guest
20 % at the first pass that did not converge, then 10 % more per pass, up to 99 % (or as
the policy's step sets them: initial and increment).

Every migration from one host shares that host's link: rates are water-filled (a job
capped below its fair share leaves the rest to the others). Time advances link by link
from one event (a pass ends, a timer fires) to the next, so a thousand jobs cost a few
thousand events, not a tick each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vmmove.model import MiB

_EndHook = Callable[["SimJob"], None]

__all__ = ["Link", "SimJob"]

SETUP_S = 1.0  # destination prepared and listening (libvirt: ~1.5 s peer-to-peer overhead)
CLEANUP_S = 0.3
ABORT_S = 0.1
SWITCH_OVERHEAD_S = 0.02  # pause cost beyond the bytes: device state, resume on target
POSTCOPY_PAUSE_S = 0.005
SHUTDOWN_S = 2.0
REGISTER_S = 0.5  # a cold move re-registers the VM on the target, whatever it copies
BOOT_S = 3.0
DEFAULT_DOWNTIME_MS = 300  # QEMU's downtime-limit
THROTTLE_FIRST, THROTTLE_STEP, THROTTLE_MAX = 0.20, 0.10, 0.99
_EPS = 1e-9


@dataclass(eq=False)
class SimJob:
    id: str
    vm: str
    source: str
    target: str
    live: bool
    memory: int
    resident: int
    working_set: int
    dirty_rate: float  # bytes/s
    disk: int = 0  # bytes to copy with a cold move of local storage
    was_running: bool = True
    cap: float | None = None  # bytes/s, None = link speed
    downtime_limit: float = DEFAULT_DOWNTIME_MS / 1000
    auto_converge: bool = False
    auto_converge_allowed: bool = False
    throttle_first: float = THROTTLE_FIRST  # auto-converge's first throttle, and its step
    throttle_step: float = THROTTLE_STEP
    postcopy_allowed: bool = False
    recheck: bool = False  # limits changed mid-pass: test for switchover at once
    # -- state --
    state: str = "setup"
    timer: float = SETUP_S  # seconds left in a timed state
    started: float = 0.0
    ended: float | None = None
    iteration: int = 0
    pass_left: float = 0.0  # bytes still to send in this pass
    pass_time: float = 0.0
    dirtied: float = 0.0  # bytes dirtied (unique, bounded by the working set) this pass
    sent: float = 0.0
    throttle: float = 0.0
    rate: float = 0.0  # bytes/s the link gives this job right now
    downtime: float = 0.0
    postcopy_requested: bool = False
    entered_postcopy: bool = False
    abort_requested: bool = False
    error: str | None = None
    vm_host: str | None = None  # where the VM runs once the job is over
    fault: tuple[str, str, float] | None = None  # (kind, state, seconds into it)
    in_state: float = 0.0
    faults_fired: list[str] = field(default_factory=list)

    @property
    def transferring(self) -> bool:
        return self.state in ("precopy", "postcopy", "copy")

    @property
    def pending(self) -> float:
        """Bytes the target still lacks."""
        if self.state == "precopy":
            return self.pass_left + self.dirtied
        if self.state in ("postcopy", "copy"):
            return self.pass_left
        return 0.0

    @property
    def effective_dirty_rate(self) -> float:
        return self.dirty_rate * (1.0 - self.throttle)

    def next_event(self) -> float:
        """Seconds until this job's next discrete event at its current rate."""
        if self.state in ("completed", "failed", "cancelled"):
            return float("inf")
        if self.fault is not None and self.fault[1] == self.state:
            due = self.fault[2] - self.in_state
            if due <= 0:
                return 0.0
        else:
            due = float("inf")
        if self.transferring:
            if self.pass_left <= _EPS and self.timer > _EPS:
                return min(due, self.timer)  # copied; the state's own timer still runs
            if self.rate <= 0:
                return due
            return min(due, self.pass_left / self.rate)
        return min(due, self.timer)


class Link:
    """One host's outgoing link, shared by every job leaving that host."""

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity  # bytes/s
        self.jobs: list[SimJob] = []
        self.t = 0.0

    def _share(self) -> None:
        active = [j for j in self.jobs if j.transferring]
        for j in self.jobs:
            j.rate = 0.0
        left = self.capacity
        # Water-filling: serve the most tightly capped first.
        active.sort(key=lambda j: _cap(j) or float("inf"))
        for n, job in enumerate(active):
            fair = left / (len(active) - n)
            cap = _cap(job)
            job.rate = fair if cap is None else min(cap, fair)
            left -= job.rate

    def stopcopy_rate(self, job: SimJob) -> float:
        """The final copy runs uncapped (QEMU lifts max-bandwidth), sharing only the link."""
        busy = sum(1 for j in self.jobs if j.transferring and j is not job)
        return self.capacity / (busy + 1)

    def advance(self, t: float, on_end: _EndHook) -> None:
        """Run this link's jobs forward to time ``t``."""
        while self.t < t - _EPS:
            live = [j for j in self.jobs if j.ended is None]
            if not live:
                self.t = t
                break
            self._share()
            dt = min(*(j.next_event() for j in live), t - self.t)
            dt = max(dt, 0.0)
            for job in live:
                _flow(job, dt)
            self.t += dt
            for job in live:
                _events(job, self, on_end)
        self.jobs = [j for j in self.jobs if j.ended is None]


def _cap(job: SimJob) -> float | None:
    # QEMU's post-copy has its own limit (max-postcopy-bandwidth), unlimited by default.
    return None if job.state == "postcopy" else job.cap


def _flow(job: SimJob, dt: float) -> None:
    job.in_state += dt
    if job.transferring:
        moved = min(job.rate * dt, job.pass_left)
        job.pass_left -= moved
        job.sent += moved
        if job.state == "precopy":
            job.pass_time += dt
            job.dirtied = min(float(job.working_set), job.dirtied + job.effective_dirty_rate * dt)
        if job.state == "copy":
            job.timer -= dt  # re-registering on the target runs beside the copy
    else:
        job.timer -= dt


def _enter(job: SimJob, state: str, timer: float = 0.0) -> None:
    job.state = state
    job.timer = timer
    job.in_state = 0.0


def _new_pass(job: SimJob, size: float) -> None:
    job.iteration += 1
    job.pass_left = size
    job.pass_time = 0.0
    job.dirtied = 0.0


def _events(job: SimJob, link: Link, on_end: _EndHook) -> None:
    if job.ended is not None:
        return
    if job.fault is not None and job.fault[1] == job.state and job.in_state + _EPS >= job.fault[2]:
        kind = job.fault[0]
        job.fault = None
        job.faults_fired.append(kind)
        _fail(job, link, on_end, f"injected fault: {kind} during {job.state}")
        return
    if job.abort_requested and job.state in ("setup", "precopy", "shutdown", "copy"):
        job.abort_requested = False
        _enter(job, "aborting", ABORT_S)
        return
    state = job.state
    if state == "aborting" and job.timer <= _EPS:
        _end(job, link, on_end, "cancelled", job.source)
    elif state == "setup" and job.timer <= _EPS:
        if job.live:
            _enter(job, "precopy")
            _new_pass(job, float(job.resident))
        else:
            _enter(job, "shutdown", SHUTDOWN_S if job.was_running else 0.0)
    elif state == "precopy":
        if job.postcopy_requested and job.postcopy_allowed:
            _enter(job, "switch", POSTCOPY_PAUSE_S)
            job.entered_postcopy = True
            job.downtime = POSTCOPY_PAUSE_S
            return
        mid_pass = job.pass_left > _EPS
        if mid_pass and not job.recheck:
            return
        job.recheck = False
        pending = job.pass_left + job.dirtied
        if job.rate > 0 and pending / job.rate <= job.downtime_limit:
            stop_rate = link.stopcopy_rate(job)
            job.downtime = pending / stop_rate + SWITCH_OVERHEAD_S
            job.sent += pending
            job.pass_left = job.dirtied = 0.0
            _enter(job, "stopcopy", job.downtime)
            return
        if mid_pass:
            return
        if job.auto_converge:
            job.throttle = min(
                THROTTLE_MAX,
                job.throttle_first if job.throttle == 0 else job.throttle + job.throttle_step,
            )
        _new_pass(job, pending)
    elif state == "switch" and job.timer <= _EPS:
        # Post-copy: the target runs the VM; everything not yet sent is pulled from here.
        remaining = job.pass_left + job.dirtied
        _enter(job, "postcopy")
        job.pass_left = remaining
        job.dirtied = 0.0
    elif (state == "postcopy" and job.pass_left <= _EPS) or (
        state == "stopcopy" and job.timer <= _EPS
    ):
        _enter(job, "cleanup", CLEANUP_S)
    elif state == "shutdown" and job.timer <= _EPS:
        _enter(job, "copy", REGISTER_S)
        _new_pass(job, float(job.disk) + MiB)  # the definition, and the disks if local
    elif state == "copy" and job.pass_left <= _EPS and job.timer <= _EPS:
        _enter(job, "boot", BOOT_S if job.was_running else 0.0)
    elif state == "boot" and job.timer <= _EPS:
        _enter(job, "cleanup", CLEANUP_S)
    elif state == "cleanup" and job.timer <= _EPS:
        _end(job, link, on_end, "completed", job.target)


def _fail(job: SimJob, link: Link, on_end: _EndHook, error: str) -> None:
    job.error = error
    # Before the commit point the source still holds the VM; in post-copy neither side does.
    lost = job.state in ("postcopy", "switch")
    # The source keeps its definition until cleanup: a cold boot that fails restarts there.
    committed = job.state == "cleanup"
    host = None if lost else job.target if committed else job.source
    if committed:
        _end(job, link, on_end, "completed", job.target)
        return
    _end(job, link, on_end, "failed", host)


def _end(job: SimJob, link: Link, on_end: _EndHook, state: str, host: str | None) -> None:
    job.state = state
    job.ended = link.t
    job.vm_host = host
    job.rate = 0.0
    on_end(job)
