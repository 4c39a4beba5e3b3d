"""The engine: one supervisor loop drives every migration of a connection.

Each migration is a small state machine (:class:`_Run`) that the supervisor advances
whenever it is due: run the pre-checks, reserve, start the backend job, then poll it,
apply the policy, enforce the budgets, and close the record. There is no thread per
migration: on a real clock one supervisor thread sleeps until the next poll is due; on
a virtual clock the callers who wait drive the loop and time jumps to the next due poll.

Guarantees, whatever the backend does:
- every transition is checked against :mod:`vmmove.machine` and saved before it is acted on;
- before the commit point a failure or cancel leaves the VM on its source, and a terminal
  record always names where the VM runs (asking the backend when the job cannot tell);
- progress never goes backwards, and reads 100 only once the migration completed.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import inspect
import itertools
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from vmmove.backend import Backend, Capabilities, Job, JobStatus, Reservation
from vmmove.clock import Clock, VirtualClock
from vmmove.cold import ColdMove
from vmmove.errors import (
    AuthenticationFailed,
    BackendProtocolError,
    Conflict,
    ConnectionFailed,
    InvalidInput,
    MigrationCancelled,
    MigrationFailed,
    MigrationTimedOut,
    NotFound,
    NotSupported,
    PostcopyFailed,
    PrecheckFailed,
    ReservationRefused,
    VMMoveError,
    WaitTimeout,
)
from vmmove.events import EventKind, MigrationEvent
from vmmove.machine import (
    INFERRED,
    ON_EVIDENCE,
    PHASE_ORDER,
    TRANSITIONS,
    Phase,
    check_transition,
    route,
)
from vmmove.model import (
    Figures,
    HostInfo,
    MigrationMode,
    MigrationRecord,
    MigrationSpec,
    PowerState,
    Problem,
    Progress,
    StepRecord,
    Transition,
    VMInfo,
)
from vmmove.outcomes import error_of, outcome_of
from vmmove.placement import PlacementContext, choose, explain, groups_of
from vmmove.policy import (
    START_TIME_CAPABILITIES,
    Abort,
    AtIteration,
    BudgetShare,
    ColdFallback,
    DirtyRateAbove,
    Policy,
    SetDowntime,
    Stalled,
    Step,
    resolve,
)
from vmmove.store import MemoryStore, RecordStore

if TYPE_CHECKING:
    from vmmove.plugins import Plugins

__all__ = ["PLATFORM_DECIDES", "Connection", "Migration"]

#: The code of a pre-check warning that says a policy step is the platform's call, not
#: vmmove's (KubeVirt without a MigrationPolicy API, Hyper-V's fixed switch-over): the
#: record lists it among the skipped steps.
PLATFORM_DECIDES = "platform-decides"

log = logging.getLogger("vmmove.engine")

# Where each phase sits on the progress bar; transfer fills the span up to switchover.
_PHASE_PERCENT = {
    Phase.PENDING: 0.0,
    Phase.PREPARING: 1.0,
    Phase.REQUESTING: 2.0,
    Phase.TRANSFERRING: 5.0,
    Phase.SWITCHING_OVER: 92.0,
    Phase.POSTCOPY: 93.0,
    Phase.COMPLETING: 99.0,
}
_TRANSFER_SPAN = (5.0, 91.0)
_POSTCOPY_SPAN = (93.0, 98.0)
# Errors that already say what happened; anything else is wrapped as MigrationFailed.
_KEEP_AS_IS = (
    PrecheckFailed,
    ReservationRefused,
    NotFound,
    InvalidInput,
    Conflict,
    MigrationFailed,
)
_MAX_EVENTS = 10_000  # per migration; older events drop off the front


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _keywords_checked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Typed keyword parameters for mypy, and at run time a misspelt or surplus argument
    is :class:`InvalidInput` (vmmove's own error), not Python's ``TypeError``."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidInput(f"{method.__name__}(): {exc}") from None
        return method(*args, **kwargs)

    return checked


def _given(**options: Any) -> dict[str, Any]:
    """The keyword arguments the caller gave (``None`` means "not given")."""
    return {k: v for k, v in options.items() if v is not None}


class _EventLog:
    """Append-only, bounded; readers keep absolute positions."""

    def __init__(self) -> None:
        self._items: deque[MigrationEvent] = deque(maxlen=_MAX_EVENTS)
        self._base = 0

    def append(self, event: MigrationEvent) -> None:
        if len(self._items) == _MAX_EVENTS:
            self._base += 1
        self._items.append(event)

    @property
    def end(self) -> int:
        return self._base + len(self._items)

    def read(self, pos: int) -> tuple[list[MigrationEvent], int]:
        start = max(pos, self._base)
        items = list(itertools.islice(self._items, start - self._base, None))
        return items, start + len(items)


class _Run:
    """One migration as the supervisor sees it. Only the supervisor mutates it."""

    def __init__(
        self,
        conn: Connection,
        spec: MigrationSpec,
        vm: VMInfo,
        policy: Policy,
        record: MigrationRecord | None = None,
    ) -> None:
        self.conn = conn
        self.backend = conn.backend
        self.clock = conn.clock
        self.spec = spec
        self.vm = vm
        self.policy = policy
        self.target: HostInfo | None = None
        self.mode = spec.mode
        self.job: Job | None = None
        self.reservation: Reservation | None = None
        self.error: VMMoveError | None = None
        self.cancel_requested = False
        self.holds_slot = False
        self.unreachable_since: float | None = None
        self.claimed = False  # counted in the connection's in-flight placement figures
        self.memory_claim = 0  # bytes of that count held for the target
        self.downtime_ms = 0  # the limit the policy last set (0: the platform's own)
        self.abort_sent = False
        self.abort_reason: str | None = None  # "timeout", "policy", "fallback" or None
        self.fired: set[int] = set()
        self.started_at: float | None = None
        self.low_remaining: int | None = None
        self.low_at = 0.0
        self.last_iteration = 0
        self.request_sent = bool(record is not None and record.job_ref)
        self.lost_start_since: float | None = None  # a start whose answer was lost
        self.ending: _Ending | None = None  # the job ended; the inventory not yet read
        self.finished = False  # backend.finish() called for the current job
        self.raw = _RawReport()
        self.warned: set[str] = set()
        self.commit_sample: tuple[object, ...] = ()
        self.commit_since = 0.0
        self.cold: ColdMove | None = None  # a cold move the core orchestrates
        self.events = _EventLog()
        now = self.clock.time()
        self.record = record or MigrationRecord(
            id=uuid.uuid4().hex[:12],
            backend=conn.backend_name,
            vm=vm.id,
            vm_name=vm.name,
            source=vm.host,
            source_name=conn._host_name(vm.host),
            target=spec.target,
            target_name=None if spec.target is None else conn._host_name(spec.target),
            mode=spec.mode,
            policy=policy.name,
            phase=Phase.PENDING,
            vm_host=vm.host,
            vm_host_name=conn._host_name(vm.host),
            history=(Transition(phase=Phase.PENDING, at=now),),
            created_at=now,
            updated_at=now,
        )
        self.progress = Progress(phase=self.record.phase)
        self._t0 = self.clock.now()

    # ---- record keeping ----------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self.record.phase

    def _save(self, **changes: Any) -> None:
        if "vm_host" in changes:
            host = changes["vm_host"]
            changes["vm_host_name"] = None if host is None else self.conn._host_name(host)
        self.record = replace(self.record, updated_at=self.clock.time(), **changes)
        self.conn.store.save(self.record)

    def _emit(self, kind: EventKind, message: str = "") -> None:
        event = MigrationEvent(
            migration=self.record.id,
            vm=self.record.vm,
            kind=kind,
            phase=self.phase,
            at=self.clock.time(),
            progress=self.progress,
            message=message,
        )
        self.events.append(event)
        self.conn._events.append(event)
        self.conn._observe(event)

    def _enter(
        self, phase: Phase, note: str = "", *, evidence: bool = False, **changes: Any
    ) -> None:
        check_transition(self.phase, phase, evidence=evidence)
        at = self.clock.time()
        history = (*self.record.history, Transition(phase=phase, at=at, note=note))
        self._save(phase=phase, history=history, **changes)
        self._update_progress(None)
        self._emit(EventKind.PHASE, note)
        log.debug("migration %s: %s %s", self.record.id, phase, note)

    def _walk(self, new: Phase, *, via_postcopy: bool = False) -> bool:
        """Write the phases up to ``new``, the unobserved ones marked as inferred."""
        path = route(self.phase, new, via_postcopy=via_postcopy)
        if path is None:
            return False
        for i, phase in enumerate(path):
            self._enter(phase, "" if i == len(path) - 1 else INFERRED)
        return True

    def _warn(self, message: str) -> None:
        self._save(warnings=(*self.record.warnings, message))
        self._emit(EventKind.WARNING, message)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self._warn(message)

    def _step_record(self, step: Step, applied: bool, reason: str = "") -> None:
        rec = StepRecord(step=str(step), at=self.clock.time(), applied=applied, reason=reason)
        self._save(steps=(*self.record.steps, rec))
        self._emit(EventKind.STEP, f"{step}: {'applied' if applied else 'skipped'} {reason}")

    # ---- progress ----------------------------------------------------------------------
    def _update_progress(self, status: JobStatus | None) -> None:
        phase = self.phase
        prev = self.progress
        if phase is Phase.COMPLETED:
            percent = 100.0
        elif phase.terminal:
            percent = prev.percent  # a failed or cancelled migration keeps where it got to
        else:
            percent = _PHASE_PERCENT.get(phase, prev.percent)
            if self.abort_sent and phase.cancellable:
                percent = prev.percent  # an aborting job's figures say nothing of progress
            elif status is not None and phase in (Phase.TRANSFERRING, Phase.POSTCOPY):
                lo, hi = _TRANSFER_SPAN if phase is Phase.TRANSFERRING else _POSTCOPY_SPAN
                share: float | None = None
                if status.data_total and status.data_remaining is not None:
                    share = 1.0 - status.data_remaining / status.data_total
                elif status.percent is not None:
                    share = status.percent / 100.0
                if share is not None:
                    percent = lo + (hi - lo) * min(max(share, 0.0), 1.0)
            percent = min(max(percent, prev.percent), 99.0)
        if status is None:
            self.progress = replace(
                prev, phase=phase, percent=percent, elapsed=self.clock.now() - self._t0
            )
            return
        eta = None
        if status.data_remaining is not None and status.transfer_rate:
            eta = status.data_remaining / status.transfer_rate
        self.progress = Progress(
            phase=phase,
            percent=percent,
            data_total=status.data_total,
            data_processed=status.data_processed,
            data_remaining=status.data_remaining,
            transfer_rate=status.transfer_rate,
            dirty_rate=status.dirty_rate,
            iteration=status.iteration,
            expected_downtime_ms=status.expected_downtime_ms,
            elapsed=self.clock.now() - self._t0,
            eta=eta,
        )

    def _judge_report(self, status: JobStatus) -> None:
        """The smoothing hides a backend's own slips from users; the record names them."""
        raw = self.raw
        for key, what, before, now, unit in (
            ("percent-down", "progress", raw.percent, status.percent, "%"),
            ("bytes-down", "bytes sent", raw.processed, status.data_processed, ""),
        ):
            if before is not None and now is not None and now < before:
                self._warn_once(
                    key,
                    f"backend {self.conn.backend_name} reported {what} going down "
                    f"({before:g}{unit} -> {now:g}{unit})",
                )
        if status.percent is not None:
            raw.percent = status.percent
        if status.data_processed is not None:
            raw.processed = status.data_processed

    # ---- the state machine -------------------------------------------------------------
    def advance(self, now: float) -> float | None:
        """Do what is due; return when to come back, or ``None`` once terminal."""
        try:
            return self._advance(now)
        except VMMoveError as exc:
            return self._fail(exc, now)
        except Exception as exc:  # a backend bug must not kill the supervisor
            log.exception("backend raised during migration %s", self.record.id)
            name = self.conn.backend_name
            return self._fail(
                BackendProtocolError(f"backend {name} raised {type(exc).__name__}: {exc}"), now
            )

    def _due(self, now: float) -> float | None:
        return None if self.phase.terminal else now + self.backend.poll_interval

    def _advance(self, now: float) -> float | None:
        if self.ending is not None:
            return self._conclude(now)
        if self.phase is Phase.PENDING:
            if self.cancel_requested:
                self._end(
                    _Ending(Phase.CANCELLED, MigrationCancelled, "cancelled while queued"), now
                )
                return self._due(now)
            if not self.conn._take_slot(self):
                return now + self.backend.poll_interval
            self._enter(Phase.PREPARING)
            self._prepare()
        if self.phase is Phase.REQUESTING and self.job is None and self.cold is None:
            if self.lost_start_since is not None:
                return self._find_lost_start(now)
            if self.cancel_requested:
                self._end(
                    _Ending(Phase.CANCELLED, MigrationCancelled, "cancelled before start"), now
                )
                return self._due(now)
            self._start(now)
            if self.lost_start_since is not None:
                return now + self.backend.poll_interval
        if self.cold is not None:
            return self.cold.advance(now)
        if self.job is None:
            return self._due(now)
        if self.cancel_requested and not self.abort_sent:
            self._abort("cancel")
        try:
            status = self.backend.poll(self.job)
        except ConnectionFailed as exc:
            if isinstance(exc, AuthenticationFailed) or not self._tolerate(exc, now):
                raise
            return now + self.backend.poll_interval
        if self.unreachable_since is not None:
            self.unreachable_since = None
            self._warn("contact with the platform is back")
        self._observe(status, now)
        if self.ending is not None:
            return self._conclude(now)
        return self._due(now)

    def _tolerate(self, exc: ConnectionFailed, now: float) -> bool:
        """A dropped connection is not a failed migration: the platform goes on without us.
        Keep polling for ``poll_grace`` seconds before giving up on the job."""
        if self.unreachable_since is None:
            self.unreachable_since = now
            self._warn(f"lost contact with the platform, still trying: {exc}")
        return now - self.unreachable_since <= self.conn.poll_grace

    def _prepare(self) -> None:
        self.vm = self.backend.vm(self.vm.id)
        mode, target, problems = self.conn._precheck(self.vm, self.spec, exclude=self)
        errors = [p for p in problems if p.severity == "error"]
        warnings = [p.message for p in problems if p.severity == "warning"]
        if warnings:
            self._save(warnings=(*self.record.warnings, *warnings))
        # Policy steps the platform decides itself count as skipped steps, not only warnings.
        decided = [p.message for p in problems if p.code == PLATFORM_DECIDES]
        if decided:
            at = self.clock.time()
            notes = tuple(
                StepRecord(step=m, at=at, applied=False, reason="decided by the platform")
                for m in decided
            )
            self._save(steps=(*self.record.steps, *notes))
        if errors or target is None:
            raise PrecheckFailed(f"cannot migrate {self.vm.name}", errors)
        self.mode = mode
        self.target = target
        self.conn._claim(self)
        self._enter(
            Phase.REQUESTING,
            target=target.id,
            target_name=target.name,
            mode=mode,
            source=self.vm.host,
            source_name=self.conn._host_name(self.vm.host),
        )

    def _start(self, now: float) -> None:
        assert self.target is not None
        caps = self.backend.capabilities
        if caps.reserve and self.reservation is None:
            self.reservation = self.backend.reserve(self.vm, self.target, self.spec)
            if self.reservation is not None:
                self.conn._reserved_by_backend(self)
        needs = frozenset(c for c in self.policy.needs & START_TIME_CAPABILITIES if caps.has(c))
        request_id = f"{self.record.id}-{uuid.uuid4().hex[:8]}"
        self.request_sent = True
        if self.mode is MigrationMode.COLD and caps.relocate_stopped:
            self.cold = ColdMove.begin(self, now, request_id)
            return
        # Written first: a client that dies inside start(), or a start whose answer is lost,
        # leaves a record that says what was asked, for attach() to find the job by.
        self._save(
            job_ref={
                "intent": "start",
                "vm": self.vm.id,
                "target": self.target.id,
                "mode": self.mode.value,
                "request_id": request_id,
                # When it was sent (this clock): platforms that cannot carry the id match
                # the first job queued at or after it.
                "at": repr(self.clock.time()),
            }
        )
        try:
            self.job = self.backend.start(
                self.vm,
                self.target,
                self.spec,
                self.mode,
                needs=needs,
                reservation=self.reservation,
                request_id=request_id,
            )
        except ConnectionFailed as exc:
            if isinstance(exc, AuthenticationFailed):
                raise
            # The platform may have acted on it: not a failure until it has been asked.
            self.lost_start_since = now
            self._warn(
                f"the answer to the start request was lost ({exc}): "
                "asking the platform whether it acted on it"
            )
            return
        self._started(self.job)

    def _started(self, job: Job) -> None:
        self.job = job
        self.finished = False
        self.raw = _RawReport()  # a new job counts from zero
        self.started_at = self.clock.now()
        self._save(job_ref=dict(job.ref))

    def _find_lost_start(self, now: float) -> float | None:
        """Look for the job a start request with a lost answer began, for ``poll_grace``."""
        assert self.lost_start_since is not None
        job: Job | None = None
        searchable = True
        try:
            job = self.backend.attach(self.record.job_ref)
        except (NotFound, ConnectionFailed):
            pass
        except NotSupported:
            searchable = False
        if job is not None:
            self.lost_start_since = None
            self._warn("the platform had acted on the start request: following its job")
            self._started(job)
            return self._advance(now)  # poll it at once
        if searchable and now - self.lost_start_since <= self.conn.poll_grace:
            return now + self.backend.poll_interval
        self.lost_start_since = None
        self._end(
            _Ending(
                Phase.FAILED,
                MigrationFailed,
                "the answer to the start request was lost and the platform shows no job for it",
            ),
            now,
        )
        return self._due(now)

    def _abort(self, reason: str) -> None:
        assert self.job is not None
        if not self.phase.cancellable:
            if reason == "cancel":
                self._warn(f"cancel arrived in {self.phase}, past the commit point: going on")
            self.abort_sent = True  # never ask twice
            return
        if not self.backend.capabilities.cancel:
            self._warn(f"{reason}: the platform cannot abort this migration; it goes on")
            self.abort_sent = True
            return
        self.abort_sent = True
        self.abort_reason = self.abort_reason or reason
        self.backend.abort(self.job)

    def _observe(self, status: JobStatus, now: float) -> None:
        self._judge_report(status)
        new = status.phase
        if not new.terminal:
            if new is not self.phase and PHASE_ORDER[new] < PHASE_ORDER[self.phase]:
                self._warn_once(
                    f"back-{new}",
                    f"backend {self.conn.backend_name} reported {status.native!r} ({new}) "
                    f"after {self.phase}: phases never go back, kept {self.phase}",
                )
                return
            if not self._walk(new, via_postcopy=status.postcopy):
                raise BackendProtocolError(
                    f"backend reported {status.native!r} ({new}) while {self.phase}"
                )
            self._update_progress(status)
            self._emit(EventKind.PROGRESS)
            if self.phase is Phase.TRANSFERRING and not self.abort_sent:
                self._police(status, now)
            elif (
                self.phase is Phase.REQUESTING
                and self.started_at is not None
                and not self.abort_sent
                and now - self.started_at > self._budget()
            ):
                self._abort("timeout")
            elif self.phase in (Phase.SWITCHING_OVER, Phase.POSTCOPY):
                self._watch_commit(status, now)
            return
        if new is Phase.CANCELLED and self.abort_reason == "fallback" and self.phase.cancellable:
            self._fall_back(status, now)
            return
        self._terminal(new, status, now)

    def _watch_commit(self, status: JobStatus, now: float) -> None:
        """After the commit point nothing can be aborted, but nothing may hang either: a job
        that shows no change for the stall timeout is ended by what the inventory says."""
        sample = (self.phase, status.native, status.data_processed, status.data_remaining)
        if sample != self.commit_sample:
            self.commit_sample, self.commit_since = sample, now
            return
        limit = self.spec.stall_timeout or self.policy.stall_timeout
        if now - self.commit_since > limit:
            postcopy = status.postcopy or self.phase is Phase.POSTCOPY
            self.ending = _Ending(
                Phase.FAILED,
                PostcopyFailed if postcopy else MigrationFailed,
                f"no progress for {limit:g} s in {self.phase} ({status.native}), past the "
                "commit point: the destination may be gone"
                + (
                    "; the source holds the VM paused and cannot resume it: destroy it there, "
                    "or recover post-copy if the destination comes back"
                    if postcopy
                    else ""
                ),
                postcopy=postcopy,
                since=now,
            )

    def _budget(self) -> float:
        per_gib = self.spec.completion_budget_per_gib or self.policy.completion_budget_per_gib
        return per_gib * max(self.vm.memory / (1 << 30), 2.0)

    def _police(self, status: JobStatus, now: float) -> None:
        """Apply the policy schedule, the completion budget and the stall timeout."""
        remaining = status.data_remaining
        if remaining is not None and (self.low_remaining is None or remaining < self.low_remaining):
            self.low_remaining, self.low_at = remaining, now
        elif self.low_remaining is None:
            self.low_at = now
        stalled_for = now - self.low_at if remaining is not None else 0.0
        elapsed = now - self.started_at if self.started_at is not None else 0.0
        budget = self._budget()
        for index, step in enumerate(self.policy.steps):
            if index in self.fired:
                continue
            trig = step.trigger
            holds = (
                (isinstance(trig, AtIteration) and (status.iteration or 0) >= trig.n)
                or (isinstance(trig, Stalled) and stalled_for >= trig.seconds)
                or (isinstance(trig, BudgetShare) and elapsed >= trig.share * budget)
                or (
                    isinstance(trig, DirtyRateAbove)
                    and (status.iteration or 0) >= trig.from_iteration
                    and status.dirty_rate is not None
                    and bool(status.transfer_rate)
                    and status.dirty_rate >= trig.share * (status.transfer_rate or 0.0)
                )
            )
            if not holds:
                continue
            self.fired.add(index)
            self._apply(step)
            if self.abort_sent:
                return
        stall_limit = self.spec.stall_timeout or self.policy.stall_timeout
        if elapsed > budget:
            self._abort("timeout")
        elif stalled_for > stall_limit:
            self._abort("stall")

    def _apply(self, step: Step) -> None:
        action = step.action
        caps = self.backend.capabilities
        if not caps.has(action.capability):
            self._step_record(step, applied=False, reason=f"backend lacks {action.capability}")
            return
        assert self.job is not None
        if isinstance(action, Abort):
            self._step_record(step, applied=True)
            self._abort("policy")
            return
        if isinstance(action, ColdFallback):
            if not caps.cancel:
                self._step_record(step, applied=False, reason="backend cannot abort the live job")
                return
            self._step_record(step, applied=True)
            self._abort("fallback")
            return
        note = ""
        if isinstance(action, SetDowntime):
            cap = self.spec.max_downtime
            if cap is not None and action.ms > cap:
                action, note = SetDowntime(ms=cap), f"clamped to max_downtime {cap} ms"
            if action.ms <= self.downtime_ms:
                # Policies raise the limit; a later, smaller step never lowers it.
                self._step_record(
                    step, applied=False, reason=f"limit is {self.downtime_ms} ms already"
                )
                return
        try:
            self.backend.tune(self.job, action)
        except NotSupported as exc:
            self._step_record(step, applied=False, reason=str(exc))
            return
        if isinstance(action, SetDowntime):
            self.downtime_ms = action.ms
        self._step_record(step, applied=True, reason=note)

    def _fall_back(self, status: JobStatus, now: float) -> None:
        """The live job was aborted to fall back to cold: restart as a cold move, unless the
        inventory shows the live job got there first."""
        try:
            host = self.backend.locate(self.vm.id)
        except VMMoveError:
            host = None
        if self.target is not None and host == self.target.id:
            self._terminal(Phase.COMPLETED, status, now)
            return
        self._cleanup(release=False)
        self.job = None
        self.abort_sent = False
        self.abort_reason = None
        self.mode = MigrationMode.COLD
        self._enter(
            Phase.REQUESTING,
            "falling back to cold migration",
            mode=MigrationMode.COLD,
            vm_host=host or self.record.source,
        )

    def _terminal(self, new: Phase, status: JobStatus, now: float) -> None:
        """The job says it ended: what it says is one witness; :meth:`_conclude` asks the
        inventory before anything is recorded."""
        error = status.error or status.native
        kind: type[VMMoveError] | None = None
        message = ""
        if new is Phase.CANCELLED:
            if self.abort_reason in _ABORT_WHY:
                kind, message = MigrationTimedOut, _ABORT_WHY[self.abort_reason]
                new = Phase.FAILED
            elif self.cancel_requested:
                # Keep the platform's own word on the abort (KubeVirt's abortStatus, say).
                kind = MigrationCancelled
                # The platform's own word, without saying "cancelled" twice.
                said = (error or "").strip()
                message = said if said.lower().startswith("cancel") else f"cancelled: {said}"
                message = message.rstrip(": ")
            else:
                kind, message, new = (
                    MigrationFailed,
                    f"cancelled by the platform: {error}",
                    Phase.FAILED,
                )
        elif new is Phase.FAILED:
            kind, message = MigrationFailed, error
        self._end(
            _Ending(
                new,
                kind,
                message,
                job_host=status.vm_host,
                figures=status.figures,
                postcopy=status.postcopy or self.phase is Phase.POSTCOPY,
                reported=status.native,
            ),
            now,
        )

    def _end(self, ending: _Ending, now: float) -> None:
        """Close the job, then verify where the VM runs before writing the outcome."""
        ending.since = now
        self.ending = ending
        self._cleanup()
        self._conclude(now)

    def _conclude(self, now: float) -> float | None:
        """Read where the VM runs from the inventory and write the outcome that follows it.
        While the platform cannot be reached, try again until ``poll_grace`` runs out."""
        ending = self.ending
        assert ending is not None
        try:
            host = self.backend.locate(self.vm.id)
        except ConnectionFailed as exc:
            if not self.request_sent:
                # Nothing was ever started: the VM is where it was.
                self._finalize(ending, self.record.source, located=False)
                return None
            if now - ending.since <= self.conn.poll_grace:
                self._warn_once(
                    "locate", f"cannot read the platform's inventory, still trying: {exc}"
                )
                return now + self.backend.poll_interval
            self._warn(
                f"location unknown: the platform's inventory could not be read for "
                f"{self.conn.poll_grace:g} s ({exc}); the job reported "
                f"{ending.reported or ending.phase} on {ending.job_host or 'no host'}. "
                "`vmmove show --refresh` or attach settles it once the platform answers"
            )
            self._finalize(ending, None, located=False)
            return None
        except VMMoveError as exc:
            self._warn(f"location unknown: reading the inventory failed: {exc}")
            self._finalize(ending, None, located=False)
            return None
        self._finalize(self._reconcile(ending, host), host, located=True)
        return None

    def _reconcile(self, ending: _Ending, host: str | None) -> _Ending:
        """The job's report against the inventory: the inventory wins, loudly."""
        source = self.record.source
        target = self.target.id if self.target is not None else self.record.target
        said = ending.reported or str(ending.phase)
        if ending.phase is Phase.COMPLETED:
            if host is not None and host != source:
                if host != target:
                    self._warn(
                        f"the platform placed {self.vm.name} on {host}, not on {target} as asked"
                    )
                return ending
            where = f"runs it on its source {source}" if host else "runs it on no host"
            self._warn(
                f"CONTRADICTION: the job reported {said!r} (completed) on "
                f"{ending.job_host or target}, but the platform's inventory {where}: "
                "recorded as not completed"
            )
            if host is None:
                kind = PostcopyFailed if ending.postcopy else MigrationFailed
                return replace_ending(
                    ending,
                    Phase.FAILED,
                    kind,
                    "the job reported completion, but no host runs the VM",
                )
            if self.cancel_requested:
                return replace_ending(
                    ending,
                    Phase.CANCELLED,
                    MigrationCancelled,
                    "cancelled (the job claimed completion)",
                )
            return replace_ending(
                ending,
                Phase.FAILED,
                MigrationFailed,
                "the job reported completion, but the VM never left its source",
            )
        if host is not None and host != source and self.request_sent:
            self._warn(
                f"CONTRADICTION: the job reported {said!r} ({ending.phase}: {ending.message}) "
                f"on {ending.job_host or 'its source'}, but the platform's inventory runs "
                f"{self.vm.name} on {host}: recorded as completed"
            )
            return replace_ending(ending, Phase.COMPLETED, None, "")
        if ending.job_host is not None and ending.job_host != host:
            self._warn(
                f"the job reported the VM on {ending.job_host}, the platform's inventory on "
                f"{host or 'no host'}: recorded the inventory's answer"
            )
        return ending

    def _finalize(self, ending: _Ending, vm_host: str | None, *, located: bool) -> None:
        """Write the terminal phase through the machine, with the error it implies."""
        self.ending = None
        phase, kind, message = ending.phase, ending.kind, ending.message
        evidence = False
        if phase is Phase.COMPLETED:
            self._walk(Phase.COMPLETING, via_postcopy=ending.postcopy)
            if self.cancel_requested:
                self._warn("cancel arrived as the platform committed: the migration completed")
        elif phase is Phase.CANCELLED and Phase.CANCELLED not in TRANSITIONS[self.phase]:
            phase, kind = Phase.FAILED, MigrationFailed
            message = f"{message} (the platform rolled back in {self.phase})"
        if phase is Phase.FAILED:
            if ending.postcopy and vm_host is None and self.phase is not Phase.POSTCOPY:
                self._walk(Phase.POSTCOPY)
                kind = PostcopyFailed
            if self.phase is Phase.POSTCOPY and vm_host is None:
                kind = PostcopyFailed
            evidence = (self.phase, phase) in ON_EVIDENCE
        changes: dict[str, Any] = {
            "vm_host": vm_host,
            "located_at": self.clock.time() if located else None,
            "vm_power": self._power_now() if located else None,
        }
        figures = ending.figures or self.record.figures
        if self.started_at is not None and figures.total_time is None:
            # A platform that reports no time: what vmmove itself saw go by.
            figures = replace(figures, total_time=self.clock.now() - self.started_at)
        changes["figures"] = figures
        if kind is not None:
            changes.update(error=message, error_type=kind.__name__)
        if isinstance(ending.cause, PrecheckFailed):
            changes["problems"] = ending.cause.problems
        self._enter(phase, message, evidence=evidence, **changes)
        self.error = error_of(self.record)
        self.conn._release(self)

    def _power_now(self) -> PowerState | None:
        try:
            return self.backend.vm(self.vm.id).power
        except VMMoveError:
            return None

    def _cleanup(self, release: bool = True) -> None:
        """Let the backend close the job; trouble here is a warning, never a new outcome."""
        if self.job is not None and not self.finished:
            self.finished = True
            try:
                self.backend.finish(self.job)
            except Exception as exc:
                self._warn(f"backend cleanup failed: {type(exc).__name__}: {exc}")
        if release and self.reservation is not None:
            try:
                self.backend.release(self.reservation)
            except Exception as exc:
                self._warn(f"releasing the reservation failed: {type(exc).__name__}: {exc}")
            self.reservation = None

    def _fail(self, exc: VMMoveError, now: float) -> float | None:
        """Bring a migration that hit an error to a true terminal record, through the
        machine: before the commit point the job is aborted; after it, the record follows
        the VM (completed with a warning, or the loud post-copy failure)."""
        if self.phase.terminal:
            return None
        if self.ending is not None:  # verifying already: the error only adds a warning
            self._warn(f"while verifying the outcome: {exc}")
            return self._conclude(now)
        if self.cold is not None:  # the cold move puts the VM back where it can
            self.cold._failed(exc, now)
            return self._conclude(now) if self.ending is not None else self._due(now)
        caps = self.backend.capabilities
        if self.job is not None and self.phase.cancellable and not self.abort_sent and caps.cancel:
            try:
                self.abort_sent = True
                self.backend.abort(self.job)
            except Exception:  # best effort: the record below says where the VM is
                log.exception("abort after error failed")
        kind: type[VMMoveError] = type(exc)
        message = str(exc)
        phase = outcome_of(exc).phase or Phase.FAILED
        if self.phase is Phase.COMPLETING:
            self._warn(f"after the commit point: {message}")
            ending = _Ending(Phase.COMPLETED, None, "", cause=exc)
        elif self.phase is Phase.POSTCOPY:
            ending = _Ending(Phase.FAILED, PostcopyFailed, message, postcopy=True, cause=exc)
        else:
            if not issubclass(kind, _KEEP_AS_IS):
                kind = MigrationFailed
            ending = _Ending(phase, kind, message, cause=exc)
        self._end(ending, now)
        return None if self.phase.terminal else now + self.backend.poll_interval


_ABORT_WHY = {
    "timeout": "completion budget exhausted",
    "stall": "stalled: remaining data stopped falling",
    "policy": "aborted by policy",
}


@dataclass(kw_only=False)
class _Ending:
    """How a migration is about to end, before the inventory has confirmed it."""

    phase: Phase
    kind: type[VMMoveError] | None
    message: str
    job_host: str | None = None
    figures: Figures | None = None
    postcopy: bool = False
    reported: str = ""  # the job's native status, for the record's warnings
    since: float = 0.0
    cause: VMMoveError | None = None


def replace_ending(
    ending: _Ending, phase: Phase, kind: type[VMMoveError] | None, message: str
) -> _Ending:
    return dataclasses.replace(ending, phase=phase, kind=kind, message=message)


@dataclass
class _RawReport:
    """The backend's own last figures, before smoothing."""

    percent: float | None = None
    processed: int | None = None


class _Supervisor:
    """One loop for all migrations of a connection."""

    def __init__(self, clock: Clock, store: RecordStore) -> None:
        self.clock = clock
        self.store = store
        self.cond = threading.Condition(threading.RLock())
        self._heap: list[tuple[float, int, _Run]] = []
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, run: _Run) -> None:
        with self.cond:
            heapq.heappush(self._heap, (self.clock.now(), next(self._seq), run))
            if not self.clock.virtual and self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="vmmove-supervisor", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def poke(self, run: _Run) -> None:
        """Make ``run`` due now (a cancel was asked)."""
        with self.cond:
            heapq.heappush(self._heap, (self.clock.now(), next(self._seq), run))
        self._wake.set()

    def _step(self) -> float | None:
        """Advance everything due; return the next due time (``None``: nothing left)."""
        with self.cond:
            self._take_requests()
            now = self.clock.now()
            advanced: set[int] = set()
            while self._heap and self._heap[0][0] <= now:
                _, _, run = heapq.heappop(self._heap)
                if run.phase.terminal or id(run) in advanced:
                    continue  # a poke left a duplicate entry
                advanced.add(id(run))
                due = run.advance(now)
                if due is not None:
                    heapq.heappush(self._heap, (due, next(self._seq), run))
            self.cond.notify_all()
            return self._heap[0][0] if self._heap else None

    def _take_requests(self) -> None:
        """Cancels asked for by other processes through the journal (``vmmove cancel ID``)."""
        if not self._heap:
            return
        ids = self.store.cancel_requests()
        if not ids:
            return
        for _, _, run in self._heap:
            if run.record.id in ids and run.phase.cancellable and not run.cancel_requested:
                run.cancel_requested = True
                run._warn("cancel requested by another process")

    def _loop(self) -> None:
        while True:
            with self.cond:
                if self._closed:  # never poll a backend that is being closed
                    self._thread = None
                    return
            due = self._step()
            with self.cond:
                if due is None or self._closed:
                    self._thread = None
                    return
            self._wake.clear()
            self.clock.wait(self._wake, due - self.clock.now())

    def drive_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Return once ``done()`` holds, or ``False`` after ``timeout`` seconds of the clock."""
        clock = self.clock
        deadline = None if timeout is None else clock.now() + timeout
        if isinstance(clock, VirtualClock):
            while True:
                with self.cond:
                    if done():
                        return True
                    if not self._heap:
                        return done()
                    due = self._heap[0][0]
                    if deadline is not None and due > deadline:
                        clock.advance_to(deadline)
                        return done()
                    clock.advance_to(due)
                    self._step()
        with self.cond:
            while not done():
                left = None if deadline is None else deadline - clock.now()
                if left is not None and left <= 0:
                    return False
                # Real seconds to wait for a notify: scaled clocks run faster than real time.
                speed = getattr(clock, "speed", 1.0)
                self.cond.wait(None if left is None else left / speed)
            return True

    def close(self) -> None:
        with self.cond:
            self._closed = True
        self._wake.set()


class Migration:
    """A handle on one migration. Cheap to keep; all state lives in :attr:`record`."""

    def __init__(self, run: _Run, supervisor: _Supervisor) -> None:
        self._run = run
        self._sup = supervisor

    @property
    def connection(self) -> Connection:
        """The connection supervising this migration (close it when done with it)."""
        return self._run.conn

    def __repr__(self) -> str:
        rec = self._run.record
        return f"<Migration {rec.id} {rec.vm_name} {rec.phase} on {rec.vm_host}>"

    @property
    def id(self) -> str:
        return self._run.record.id

    @property
    def record(self) -> MigrationRecord:
        return self._run.record

    @property
    def progress(self) -> Progress:
        return self._run.progress

    @property
    def done(self) -> bool:
        return self._run.phase.terminal

    def wait(self, timeout: float | None = None) -> MigrationRecord:
        """Wait for the end; return the record if completed, else raise its error.

        ``timeout`` is in seconds of the connection's clock (simulated seconds on a
        virtual clock). :class:`WaitTimeout` leaves the migration running.
        """
        if not self._sup.drive_until(lambda: self._run.phase.terminal, timeout):
            raise WaitTimeout(f"migration {self.id} still {self._run.phase} after {timeout}s")
        if self._run.error is not None:
            raise self._run.error
        return self._run.record

    def cancel(self) -> bool:
        """Ask for a cancel. ``False`` when it comes too late (past the commit point or done);
        the outcome is read from :attr:`record`."""
        run = self._run
        with self._sup.cond:
            if not run.phase.cancellable or run.cancel_requested:
                return run.cancel_requested and not run.phase.terminal
            run.cancel_requested = True
        self._sup.poke(run)
        return True

    def events(self, timeout: float | None = None) -> Iterator[MigrationEvent]:
        """Every event from the start, then live ones, until the migration ends."""
        pos = 0
        log_ = self._run.events
        while True:
            items, pos = log_.read(pos)
            yield from items
            if self._run.phase.terminal and pos >= log_.end:
                return

            def more(seen: int = pos) -> bool:
                return log_.end > seen or self._run.phase.terminal

            if not self._sup.drive_until(more, timeout):
                raise WaitTimeout(f"no event from migration {self.id} for {timeout}s")


class Connection:
    """A connection to one hypervisor estate through one backend. Use :func:`vmmove.connect`."""

    def __init__(
        self,
        backend: Backend,
        *,
        uri: str,
        plugins: Plugins,
        store: RecordStore | None = None,
        max_concurrent: int | None = None,
        poll_grace: float = 120.0,
    ) -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise InvalidInput("max_concurrent must be at least 1")
        #: seconds a job may stay unreachable before its migration is given up on
        self.poll_grace = poll_grace
        self.backend = backend
        self.uri = uri
        self.backend_name = backend.scheme or type(backend).__name__
        self.plugins = plugins
        self.store: RecordStore = store or MemoryStore()
        self.max_concurrent = max_concurrent
        self.clock = backend.clock
        self._sup = _Supervisor(self.clock, self.store)
        self._runs: dict[str, _Run] = {}
        self._by_vm: dict[str, _Run] = {}
        self._active = 0
        self._reserved: dict[str, int] = {}
        self._inflight: dict[str, int] = {}
        self._events = _EventLog()  # every migration's, in the order they happened
        self._host_names: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<vmmove.Connection {self.uri}>"

    def _host_name(self, host_id: str) -> str:
        """A host's name for records (its id when the platform cannot say)."""
        name = self._host_names.get(host_id)
        if name is None:
            try:
                name = self.backend.host(host_id).name
            except VMMoveError:
                return host_id  # not cached: ask again next time
            self._host_names[host_id] = name
        return name

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def capabilities(self) -> Capabilities:
        """What the backend declares it can do."""
        return self.backend.capabilities

    def events(self, timeout: float | None = None) -> Iterator[MigrationEvent]:
        """Every event of every migration of this connection, in the order they happened
        (from the oldest still kept), until no migration is left running.

        Follows migrations started while iterating too. ``timeout`` bounds the wait for
        each next event (:class:`WaitTimeout`). Any thread may iterate, several at once.
        """
        pos = 0
        log_ = self._events
        while True:
            items, pos = log_.read(pos)
            yield from items
            if pos >= log_.end and all(r.phase.terminal for r in list(self._runs.values())):
                return

            def more(seen: int = pos) -> bool:
                return log_.end > seen or all(r.phase.terminal for r in list(self._runs.values()))

            if not self._sup.drive_until(more, timeout):
                raise WaitTimeout(f"no migration event for {timeout}s")

    # ---- inventory ---------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        return self.backend.hosts()

    def vms(self) -> list[VMInfo]:
        return self.backend.vms()

    def vm(self, ref: str) -> VMInfo:
        return self.backend.vm(ref)

    def host(self, ref: str) -> HostInfo:
        return self.backend.host(ref)

    # ---- migrations --------------------------------------------------------------------
    def _spec(
        self,
        vm: str | VMInfo | None,
        to: str | HostInfo | None,
        spec: MigrationSpec | None,
        options: Mapping[str, Any],
    ) -> MigrationSpec:
        if spec is not None and not isinstance(spec, MigrationSpec):
            raise InvalidInput(f"spec must be a MigrationSpec, not {type(spec).__name__}")
        vm_ref = vm.id if isinstance(vm, VMInfo) else vm
        to_ref = to.id if isinstance(to, HostInfo) else to
        if spec is None:
            if vm_ref is None:
                raise InvalidInput("name the VM to migrate")
            try:
                return MigrationSpec(vm=vm_ref, target=to_ref, **options)
            except TypeError as exc:
                raise InvalidInput(str(exc)) from None
        changes: dict[str, Any] = dict(options)
        if vm_ref is not None:
            changes["vm"] = vm_ref
        if to_ref is not None:
            changes["target"] = to_ref
        try:
            return replace(spec, **changes) if changes else spec
        except TypeError as exc:
            raise InvalidInput(str(exc)) from None

    def _precheck(
        self, vm: VMInfo, spec: MigrationSpec, exclude: _Run | None = None
    ) -> tuple[MigrationMode, HostInfo | None, list[Problem]]:
        """Every pre-check, the engine's and the backend's; chooses the target if needed."""
        backend = self.backend
        caps = backend.capabilities
        problems: list[Problem] = []

        def refuse(code: str, message: str, severity: str = "error") -> None:
            problems.append(Problem(code=code, message=message, severity=severity))  # type: ignore[arg-type]

        mode = spec.mode
        if mode is MigrationMode.AUTO:
            mode = MigrationMode.LIVE if vm.power is PowerState.RUNNING else MigrationMode.COLD
        if mode is MigrationMode.LIVE:
            if vm.power is not PowerState.RUNNING:
                refuse("not-running", f"live migration needs a running VM; {vm.name} is {vm.power}")
            elif not vm.live_migratable:
                why = vm.not_migratable_reason or "the platform says so"
                refuse("not-migratable", f"{vm.name} cannot migrate live: {why}")
            if not caps.live:
                refuse("unsupported", "this backend cannot migrate live")
        elif not caps.cold:
            refuse("unsupported", "this backend cannot migrate cold")
        for name in ("bandwidth", "max_downtime"):
            if getattr(spec, name) is not None and not caps.has(name):
                refuse(
                    "unsupported", f"{name} is not supported by this backend; ignored", "warning"
                )
        target: HostInfo | None = None
        cluster = backend.host(vm.host).cluster
        ctx = self._placement_context(exclude, cluster, vm)
        placement = self.plugins.placement
        if spec.target is not None:
            target = backend.host(spec.target)
            if not caps.choose_target:
                refuse("unsupported", "this backend lets the platform choose the target host")
            if spec.datastore is not None and not caps.storage_move:
                refuse("unsupported", "this backend cannot move storage")
            if target.id == vm.host and spec.datastore is None:
                refuse("same-host", f"{vm.name} already runs on {target.name}")
            elif target.id != vm.host:
                verdict = explain(vm, [target], ctx, placement)[0]
                for reason in verdict.rejected:
                    refuse("placement", f"{target.name}: {reason}")
        elif not problems or all(p.severity == "warning" for p in problems):
            try:
                target = choose(vm, backend.hosts(), ctx, placement)
            except PrecheckFailed as exc:
                problems.extend(exc.problems)
        if target is not None and all(p.severity == "warning" for p in problems):
            problems.extend(backend.check(vm, target, spec))
        return mode, target, problems

    @_keywords_checked
    def check(
        self,
        vm: str | VMInfo | None = None,
        to: str | HostInfo | None = None,
        *,
        spec: MigrationSpec | None = None,
        mode: MigrationMode | str | None = None,
        policy: str | Policy | None = None,
        bandwidth: int | None = None,
        max_downtime: int | None = None,
        completion_budget_per_gib: float | None = None,
        stall_timeout: float | None = None,
        datastore: str | None = None,
    ) -> list[Problem]:
        """Run every pre-check without moving anything: no errors in the list means it would go.
        The keyword arguments are those of :meth:`migrate`."""
        options = _given(
            mode=mode,
            policy=policy,
            bandwidth=bandwidth,
            max_downtime=max_downtime,
            completion_budget_per_gib=completion_budget_per_gib,
            stall_timeout=stall_timeout,
            datastore=datastore,
        )
        spec = self._spec(vm, to, spec, options)
        resolve(spec.policy, self.plugins.policies)
        info = self.backend.vm(spec.vm)
        with self._sup.cond:
            return self._precheck(info, spec)[2]

    @_keywords_checked
    def migrate(
        self,
        vm: str | VMInfo | None = None,
        to: str | HostInfo | None = None,
        *,
        spec: MigrationSpec | None = None,
        mode: MigrationMode | str | None = None,
        policy: str | Policy | None = None,
        bandwidth: int | None = None,
        max_downtime: int | None = None,
        completion_budget_per_gib: float | None = None,
        stall_timeout: float | None = None,
        datastore: str | None = None,
    ) -> Migration:
        """Start migrating ``vm`` to ``to`` (``None``: let placement choose).

        The keyword arguments override the :class:`MigrationSpec` fields of the same name
        (``spec`` or the defaults): ``mode`` (auto, live, cold), ``policy`` (a preset name
        or a :class:`Policy`), ``bandwidth`` (MiB/s), ``max_downtime`` (ms),
        ``completion_budget_per_gib`` and ``stall_timeout`` (s), ``datastore``. Unknown VMs
        and hosts, a target that already runs the VM, and malformed options raise at once
        and change nothing; everything else is reported through the returned handle.

        Thread-safe: any thread may call it, and every method of :class:`Migration`.
        """
        options = _given(
            mode=mode,
            policy=policy,
            bandwidth=bandwidth,
            max_downtime=max_downtime,
            completion_budget_per_gib=completion_budget_per_gib,
            stall_timeout=stall_timeout,
            datastore=datastore,
        )
        spec = self._spec(vm, to, spec, options)
        resolved = resolve(spec.policy, self.plugins.policies)
        info = self.backend.vm(spec.vm)
        target: HostInfo | None = None
        if spec.target is not None:
            target = self.backend.host(spec.target)  # NotFound now, not later
            if target.id == info.host and spec.datastore is None:
                problem = Problem(
                    code="same-host", message=f"{info.name} already runs on {target.name}"
                )
                raise PrecheckFailed(f"cannot migrate {info.name}", [problem])
        # The record holds ids from the start, whatever the caller typed (names beside them).
        spec = replace(spec, vm=info.id, target=None if target is None else target.id)
        policy = resolved
        run = _Run(self, spec, info, policy)
        with self._sup.cond:
            if info.id in self._by_vm:
                other = self._by_vm[info.id].record.id
                raise Conflict(f"VM {info.name} is already migrating (migration {other})")
            self.store.begin(run.record)  # the journal's lock: no other process has this VM
            self._by_vm[info.id] = run
            self._runs[run.record.id] = run
            run._emit(EventKind.PHASE)
        self._sup.submit(run)
        return Migration(run, self._sup)

    def attach(self, record_id: str) -> Migration:
        """Supervise a migration whose client went away, from its durable record.

        The backend finds the job again from the record's ``job_ref``. A job that cannot be
        found ends the record truthfully: nothing started (cancelled) or where the VM is.
        """
        with self._sup.cond:
            if record_id in self._runs:
                known = self._runs[record_id]
                if known.phase.terminal and known.record.located_at is None:
                    self._settle_location(known)
                return Migration(known, self._sup)
        record = self.store.get(record_id)
        try:
            vm = self.backend.vm(record.vm)
        except NotFound:
            if not record.phase.terminal:
                raise
            # An ended record outlives its VM: the record alone answers for it.
            vm = VMInfo(
                id=record.vm,
                name=record.vm_name,
                host=record.vm_host or record.source,
                power=PowerState.STOPPED,
                memory=0,
                vcpus=0,
            )
        try:
            policy = resolve(record.policy, self.plugins.policies)
        except InvalidInput:
            policy = resolve("none")  # a custom schedule is not in the record: budgets only
        spec = MigrationSpec(vm=vm.id, target=record.target, mode=record.mode, policy=policy)
        run = _Run(self, spec, vm, policy, record=record)
        run.error = error_of(record)
        if record.phase.terminal:
            if record.located_at is None:
                self._settle_location(run)
            return Migration(run, self._sup)
        self.store.adopt(record)
        with self._sup.cond:
            self._restore(run)
            self._runs[record.id] = run
            if not run.phase.terminal:
                self._by_vm[vm.id] = run
        if not run.phase.terminal:
            self._sup.submit(run)
        return Migration(run, self._sup)

    def _settle_location(self, run: _Run) -> None:
        """A record that ended with the location unknown: ask the inventory now."""
        try:
            host = self.backend.locate(run.vm.id)
        except ConnectionFailed:
            return
        record = run.record
        note = f"location verified later: the platform runs {record.vm_name} on {host or 'no host'}"
        target_side = record.target is not None and host == record.target != record.source
        if (record.phase is Phase.COMPLETED) != target_side:
            note = (
                f"CONTRADICTION: {note}, which the recorded outcome ({record.phase}) does not say"
            )
        run._save(vm_host=host, located_at=self.clock.time(), warnings=(*record.warnings, note))
        run.error = error_of(run.record)

    def _restore(self, run: _Run) -> None:
        """Find the job again (called with the supervisor lock held)."""
        record = run.record
        now = self.clock.now()
        if record.target is not None:
            run.target = self.backend.host(record.target)
            self._claim(run)
        ref = dict(record.job_ref)
        if not ref:  # the client went away before anything was asked of the platform
            run._end(
                _Ending(
                    Phase.CANCELLED,
                    MigrationCancelled,
                    "the client went away before the job started",
                ),
                now,
            )
            return
        if ref.get("intent") == "cold":
            run.request_sent = True
            run.cold = ColdMove.resume(run, ref, now)
            return
        try:
            job = self.backend.attach(ref)
        except ConnectionFailed:
            if ref.get("intent") == "start":
                run.lost_start_since = now  # keep asking, as for a lost start answer
                return
            raise
        except (NotFound, NotSupported) as exc:
            kind: type[VMMoveError]
            if ref.get("intent") == "start":
                message, kind, phase = (
                    "the client went away before the job started",
                    MigrationCancelled,
                    Phase.CANCELLED,
                )
            else:
                message = f"the client went away and the job cannot be found ({exc})"
                kind, phase = MigrationFailed, Phase.FAILED
            run._end(_Ending(phase, kind, message), now)
            return
        run._started(job)
        run._t0 = run.started_at or now

    def migrations(self) -> list[Migration]:
        return [Migration(r, self._sup) for r in self._runs.values()]

    def migration(self, record_id: str) -> Migration:
        try:
            return Migration(self._runs[record_id], self._sup)
        except KeyError:
            raise NotFound(f"no migration {record_id!r} in this connection") from None

    def wait_all(self, timeout: float | None = None) -> list[MigrationRecord]:
        """Wait until every migration of this connection ended; return their records."""
        runs = list(self._runs.values())
        if not self._sup.drive_until(lambda: all(r.phase.terminal for r in runs), timeout):
            raise WaitTimeout(f"migrations still running after {timeout}s")
        return [r.record for r in runs]

    def detach(self) -> None:
        """Stop supervising, as a client that dies would: nothing is aborted, migrations go
        on on the platform, and :meth:`attach` (here or in another process) picks them up
        from their records. The backend stays open."""
        self._sup.close()

    def close(self) -> None:
        self._sup.close()
        self.backend.close()

    # ---- supervisor callbacks (called with the supervisor lock held) -------------------
    def _take_slot(self, run: _Run) -> bool:
        if self.max_concurrent is not None and self._active >= self.max_concurrent:
            return False
        self._active += 1
        run.holds_slot = True
        return True

    def _release(self, run: _Run) -> None:
        self._unclaim(run)
        if self._by_vm.get(run.vm.id) is run:
            del self._by_vm[run.vm.id]
        if run.holds_slot:
            run.holds_slot = False
            self._active -= 1

    def _placement_context(
        self, exclude: _Run | None = None, source_cluster: str = "", vm: VMInfo | None = None
    ) -> PlacementContext:
        """What moves in flight hold (memory reserved on targets, migrations per host) and,
        for a VM in affinity groups, where the rest of its groups run."""
        reserved = dict(self._reserved)
        inflight = dict(self._inflight)
        if exclude is not None and exclude.claimed:
            self._count(exclude, -1, reserved, inflight)
        groups: dict[str, dict[str, int]] = {}
        wanted = {g for gs in groups_of(vm) for g in gs} if vm is not None else set()
        if wanted:  # listing every VM costs O(VMs): only for VMs that ask for it
            for other in self.backend.vms():
                for group in {g for gs in groups_of(other) for g in gs} & wanted:
                    per_host = groups.setdefault(group, {})
                    per_host[other.host] = per_host.get(other.host, 0) + 1
            for run in self._by_vm.values():  # moves in flight count where they are going
                if run is not exclude and run.target is not None and run.claimed:
                    for group in {g for gs in groups_of(run.vm) for g in gs} & wanted:
                        per_host = groups.setdefault(group, {})
                        per_host[run.target.id] = per_host.get(run.target.id, 0) + 1
        return PlacementContext(
            reserved_memory=reserved,
            inflight=inflight,
            source_cluster=source_cluster,
            groups=groups,
        )

    @staticmethod
    def _count(run: _Run, sign: int, reserved: dict[str, int], inflight: dict[str, int]) -> None:
        assert run.target is not None
        target, source = run.target.id, run.vm.host
        reserved[target] = reserved.get(target, 0) + sign * run.memory_claim
        inflight[target] = inflight.get(target, 0) + sign
        inflight[source] = inflight.get(source, 0) + sign

    def _claim(self, run: _Run) -> None:
        """Count a run that chose its target; kept incrementally so placement stays O(hosts)."""
        if not run.claimed:
            run.memory_claim = run.vm.memory
            self._count(run, +1, self._reserved, self._inflight)
            run.claimed = True

    def _reserved_by_backend(self, run: _Run) -> None:
        """The backend holds the memory now and reports it in ``HostInfo.allocated``:
        stop counting it here too, or a filling host looks fuller than it is."""
        if run.claimed and run.memory_claim and run.target is not None:
            self._reserved[run.target.id] -= run.memory_claim
            run.memory_claim = 0

    def _unclaim(self, run: _Run) -> None:
        if run.claimed:
            self._count(run, -1, self._reserved, self._inflight)
            run.claimed = False

    def _observe(self, event: MigrationEvent) -> None:
        if not self.plugins.has_observers:
            return
        try:
            self.plugins.pm.hook.vmmove_migration_event(event=event)
        except Exception:
            log.exception("a vmmove_migration_event observer raised")
