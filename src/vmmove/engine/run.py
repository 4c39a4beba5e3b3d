"""One migration as the supervisor sees it: its record, its progress, and the state machine
that advances it (pre-checks, start, poll). Only the supervisor mutates it."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vmmove.backend import Job, JobRef, JobStatus, Reservation
from vmmove.engine.cold import ColdMove
from vmmove.engine.convergence import budget, police, watch_commit
from vmmove.engine.ending import Ending, RawReport
from vmmove.engine.eventlog import EventLog
from vmmove.engine.outcome import conclude_run, end_run, fail, fall_back, terminal
from vmmove.engine.precheck import precheck
from vmmove.errors import (
    AuthenticationFailed,
    BackendProtocolError,
    ConnectionFailed,
    MigrationCancelled,
    MigrationFailed,
    NotFound,
    NotSupported,
    PrecheckFailed,
    VMMoveError,
)
from vmmove.events import EventKind, MigrationEvent
from vmmove.machine import (
    INFERRED,
    PHASE_ORDER,
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
    Progress,
    StepRecord,
    Transition,
    VMInfo,
)
from vmmove.policy import (
    START_TIME_CAPABILITIES,
    Policy,
    Step,
)
from vmmove.prediction import forecast

if TYPE_CHECKING:
    from vmmove.engine.connection import Connection

log = logging.getLogger("vmmove.engine")

#: The code of a pre-check warning that says a policy step is the platform's call, not
#: vmmove's (KubeVirt without a MigrationPolicy API, Hyper-V's fixed switch-over): the
#: record lists it among the skipped steps.
PLATFORM_DECIDES = "platform-decides"

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


class MigrationRun:
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
        self.ending: Ending | None = None  # the job ended; the inventory not yet read
        self.finished = False  # backend.finish() called for the current job
        self.raw = RawReport()
        self.warned: set[str] = set()
        self.commit_sample: tuple[object, ...] = ()
        self.commit_since = 0.0
        self.cold: ColdMove | None = None
        self.next_poll: float | None = (
            None  # the job's own pace, from its last status  # a cold move the core orchestrates
        )
        self.events = EventLog()
        now = self.clock.time()
        self.record = record or MigrationRecord(
            id=uuid.uuid4().hex[:12],
            backend=conn.backend_name,
            vm=vm.id,
            vm_name=vm.name,
            source=vm.host,
            source_name=conn.host_name(vm.host),
            target=spec.target,
            target_name=None if spec.target is None else conn.host_name(spec.target),
            mode=spec.mode,
            policy=policy.name,
            phase=Phase.PENDING,
            vm_host=vm.host,
            vm_host_name=conn.host_name(vm.host),
            history=(Transition(phase=Phase.PENDING, at=now),),
            created_at=now,
            updated_at=now,
            limits=spec.limits,
        )
        self.progress = Progress(phase=self.record.phase)
        self.t0 = self.clock.now()

    # ---- record keeping ----------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self.record.phase

    def save(self, **changes: Any) -> None:
        if "vm_host" in changes:
            host = changes["vm_host"]
            changes["vm_host_name"] = None if host is None else self.conn.host_name(host)
        self.record = replace(self.record, updated_at=self.clock.time(), **changes)
        self.conn.store.save(self.record)

    def emit(self, kind: EventKind, message: str = "") -> None:
        event = MigrationEvent(
            migration=self.record.id,
            vm=self.record.vm,
            kind=kind,
            phase=self.phase,
            at=self.clock.time(),
            progress=self.progress,
            message=message,
            record=self.record,
        )
        self.events.append(event)
        self.conn.event_log.append(event)
        plugins = self.conn.plugins
        if plugins.has_observers:
            try:
                plugins.pm.hook.vmmove_migration_event(event=event)
            except Exception:
                log.exception("a vmmove_migration_event observer raised")

    def enter(
        self, phase: Phase, note: str = "", *, evidence: bool = False, **changes: Any
    ) -> None:
        check_transition(self.phase, phase, evidence=evidence)
        at = self.clock.time()
        history = (*self.record.history, Transition(phase=phase, at=at, note=note))
        self.save(phase=phase, history=history, **changes)
        self.update_progress(None)
        self.emit(EventKind.PHASE, note)
        log.debug("migration %s: %s %s", self.record.id, phase, note)

    def walk(self, new: Phase, *, via_postcopy: bool = False) -> bool:
        """Write the phases up to ``new``, the unobserved ones marked as inferred."""
        path = route(self.phase, new, via_postcopy=via_postcopy)
        if path is None:
            return False
        for i, phase in enumerate(path):
            self.enter(phase, "" if i == len(path) - 1 else INFERRED)
        return True

    def cancel_refused(self) -> str | None:
        """Why a cancel asked now could not take effect, or ``None`` when it can: before the
        platform holds a job the engine stops the migration itself; once it does (or may, an
        answer being lost), only a platform that can abort it can."""
        if self.backend.capabilities.cancel:
            return None
        if self.cold is not None:
            if self.cold.step in ("stopping", "forcing"):
                return None  # not moved yet: the core starts it again where it was
        elif self.job is None and self.lost_start_since is None:
            return None
        return self.backend.cancel_refusal

    def refuse_cancel(self, reason: str) -> None:
        self.warn_once("cancel-refused", f"cancel refused: {reason}; the migration goes on")

    def warn(self, message: str) -> None:
        self.save(warnings=(*self.record.warnings, message))
        self.emit(EventKind.WARNING, message)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.warn(message)

    def record_step(self, step: Step, applied: bool, reason: str = "") -> None:
        rec = StepRecord(step=str(step), at=self.clock.time(), applied=applied, reason=reason)
        self.save(steps=(*self.record.steps, rec))
        self.emit(EventKind.STEP, f"{step}: {'applied' if applied else 'skipped'} {reason}")

    # ---- progress ----------------------------------------------------------------------
    def update_progress(self, status: JobStatus | None) -> None:
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
                prev, phase=phase, percent=percent, elapsed=self.clock.now() - self.t0
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
            throttle=status.throttle,
            elapsed=self.clock.now() - self.t0,
            eta=eta,
        )

    def judge_report(self, status: JobStatus) -> None:
        """The smoothing hides a backend's own slips from users; the record names them."""
        for key, slip in self.raw.take(status):
            self.warn_once(key, f"backend {self.conn.backend_name} reported {slip}")

    # ---- the state machine -------------------------------------------------------------
    def advance(self, now: float) -> float | None:
        """Do what is due; return when to come back, or ``None`` once terminal."""
        try:
            return self._advance(now)
        except VMMoveError as exc:
            return fail(self, exc, now)
        except Exception as exc:  # a backend bug must not kill the supervisor
            log.exception("backend raised during migration %s", self.record.id)
            name = self.conn.backend_name
            return fail(
                self,
                BackendProtocolError(f"backend {name} raised {type(exc).__name__}: {exc}"),
                now,
            )

    def due(self, now: float) -> float | None:
        if self.phase.terminal:
            return None
        return now + (self.next_poll if self.next_poll is not None else self.backend.poll_interval)

    def _advance(self, now: float) -> float | None:
        if self.ending is not None:
            return self.conclude(now)
        if self.phase is Phase.PENDING:
            if self.cancel_requested:
                self.end(Ending(Phase.CANCELLED, MigrationCancelled, "cancelled while queued"), now)
                return self.due(now)
            if not self.conn.ledger.take_slot(self):
                return now + self.backend.poll_interval
            self.enter(Phase.PREPARING)
            self._prepare()
        if self.phase is Phase.REQUESTING and self.job is None and self.cold is None:
            if self.lost_start_since is not None:
                return self._find_lost_start(now)
            if self.cancel_requested:
                self.end(Ending(Phase.CANCELLED, MigrationCancelled, "cancelled before start"), now)
                return self.due(now)
            self._start(now)
            if self.lost_start_since is not None:
                return now + self.backend.poll_interval
        if self.cold is not None:
            return self.cold.advance(now)
        if self.job is None:
            return self.due(now)
        if self.cancel_requested and not self.abort_sent:
            self.abort("cancel")
        try:
            status = self.backend.poll(self.job)
        except ConnectionFailed as exc:
            if isinstance(exc, AuthenticationFailed) or not self.tolerate(exc, now):
                raise
            return now + self.backend.poll_interval
        if self.unreachable_since is not None:
            self.unreachable_since = None
            self.warn("contact with the platform is back")
        self.next_poll = status.next_poll
        self._observe(status, now)
        if self.ending is not None:
            return self.conclude(now)
        return self.due(now)

    def tolerate(self, exc: ConnectionFailed, now: float) -> bool:
        """A dropped connection is not a failed migration: the platform goes on without us.
        Keep polling for ``poll_grace`` seconds before giving up on the job."""
        if self.unreachable_since is None:
            self.unreachable_since = now
            self.warn(f"lost contact with the platform, still trying: {exc}")
        return now - self.unreachable_since <= self.conn.poll_grace

    def _prepare(self) -> None:
        self.vm = self.backend.vm(self.vm.id)
        checked = precheck(self.conn, self.vm, self.spec, self.policy, exclude=self)
        mode, target, problems = checked.mode, checked.target, checked.problems
        errors = [p for p in problems if p.severity == "error"]
        warnings = [p.message for p in problems if p.severity == "warning"]
        if warnings:
            self.save(warnings=(*self.record.warnings, *warnings))
        # Policy steps the platform decides itself count as skipped steps, not only warnings.
        decided = [p.message for p in problems if p.code == PLATFORM_DECIDES]
        if decided:
            at = self.clock.time()
            notes = tuple(
                StepRecord(step=m, at=at, applied=False, reason="decided by the platform")
                for m in decided
            )
            self.save(steps=(*self.record.steps, *notes))
        if errors or target is None:
            raise PrecheckFailed(f"cannot migrate {self.vm.name}", errors)
        self.mode = mode
        self.target = target
        self.conn.ledger.claim(self)
        self.enter(
            Phase.REQUESTING,
            target=target.id,
            target_name=target.name,
            mode=mode,
            source=self.vm.host,
            source_name=self.conn.host_name(self.vm.host),
            predicted=self._predicted(checked.source, target),
        )

    def _predicted(self, source: HostInfo, target: HostInfo) -> Figures | None:
        """The cost model's forecast, kept to be judged against the outcome (the metrics'
        predicted vs measured); only from a measured dirty rate, never an assumed one."""
        if self.mode is not MigrationMode.LIVE or self.vm.dirty_rate is None:
            return None
        return forecast(
            self.vm,
            source,
            target,
            self.policy,
            bandwidth=self.spec.bandwidth,
            max_downtime=self.spec.max_downtime,
            allow_postcopy=self.spec.allow_postcopy,
            max_slowdown=self.spec.max_slowdown,
            link=self.conn.link,
            setup_s=self.backend.setup_s,
            switchover_s=self.backend.switchover_s,
            postcopy_switch_s=self.backend.postcopy_switch_s,
            capabilities=self.backend.capabilities,
        )

    def _start(self, now: float) -> None:
        assert self.target is not None
        caps = self.backend.capabilities
        if caps.reserve and self.reservation is None:
            self.reservation = self.backend.reserve(self.vm, self.target, self.spec)
            if self.reservation is not None:
                self.conn.ledger.reserved_by_backend(self)
        needs = frozenset(c for c in self.policy.needs & START_TIME_CAPABILITIES if caps.has(c))
        if self.spec.allow_postcopy is False:
            needs -= {"postcopy"}  # a switch the caller forbade is not armed either
        request_id = f"{self.record.id}-{uuid.uuid4().hex[:8]}"
        self.request_sent = True
        if self.mode is MigrationMode.COLD and caps.relocate_stopped:
            self.cold = ColdMove.begin(self, now, request_id)
            return
        # Written first: a client that dies inside start(), or a start whose answer is lost,
        # leaves a record that says what was asked, for attach() to find the job by.
        self.save(
            job_ref=JobRef.start(
                request_id=request_id,
                vm=self.vm.id,
                target=self.target.id,
                mode=self.mode,
                # Platforms that cannot carry the id match the first job queued after it.
                at=self.clock.time(),
            ).dump()
        )
        try:
            self.job = self.backend.start(
                self.vm,
                self.target,
                self.spec,
                self.mode,
                policy=self.policy,
                needs=needs,
                reservation=self.reservation,
                request_id=request_id,
            )
        except ConnectionFailed as exc:
            if isinstance(exc, AuthenticationFailed):
                raise
            # The platform may have acted on it: not a failure until it has been asked.
            self.lost_start_since = now
            self.warn(
                f"the answer to the start request was lost ({exc}): "
                "asking the platform whether it acted on it"
            )
            return
        self.started(self.job)

    def started(self, job: Job) -> None:
        self.job = job
        self.finished = False
        self.raw = RawReport()  # a new job counts from zero
        self.started_at = self.clock.now()
        self.save(job_ref=job.ref.dump())

    def _find_lost_start(self, now: float) -> float | None:
        """Look for the job a start request with a lost answer began, for ``poll_grace``."""
        assert self.lost_start_since is not None
        job: Job | None = None
        searchable = True
        try:
            job = self.backend.attach(JobRef.load(self.record.job_ref))
        except (NotFound, ConnectionFailed):
            pass
        except NotSupported:
            searchable = False
        if job is not None:
            self.lost_start_since = None
            self.warn("the platform had acted on the start request: following its job")
            self.started(job)
            return self._advance(now)  # poll it at once
        if searchable and now - self.lost_start_since <= self.conn.poll_grace:
            return now + self.backend.poll_interval
        self.lost_start_since = None
        self.end(
            Ending(
                Phase.FAILED,
                MigrationFailed,
                "the answer to the start request was lost and the platform shows no job for it",
            ),
            now,
        )
        return self.due(now)

    def abort(self, reason: str) -> None:
        assert self.job is not None
        if not self.phase.cancellable:
            if reason == "cancel":
                self.warn(f"cancel arrived in {self.phase}, past the commit point: going on")
            self.abort_sent = True  # never ask twice
            return
        if not self.backend.capabilities.cancel:
            self.warn(f"{reason}: the platform cannot abort this migration; it goes on")
            self.abort_sent = True
            return
        self.abort_sent = True
        self.abort_reason = self.abort_reason or reason
        self.backend.abort(self.job)

    def _observe(self, status: JobStatus, now: float) -> None:
        self.judge_report(status)
        new = status.phase
        if not new.terminal:
            if new is not self.phase and PHASE_ORDER[new] < PHASE_ORDER[self.phase]:
                self.warn_once(
                    f"back-{new}",
                    f"backend {self.conn.backend_name} reported {status.native!r} ({new}) "
                    f"after {self.phase}: phases never go back, kept {self.phase}",
                )
                return
            if not self.walk(new, via_postcopy=status.postcopy):
                raise BackendProtocolError(
                    f"backend reported {status.native!r} ({new}) while {self.phase}"
                )
            self.update_progress(status)
            self.emit(EventKind.PROGRESS)
            if self.phase is Phase.TRANSFERRING and not self.abort_sent:
                police(self, status, now)
            elif (
                self.phase is Phase.REQUESTING
                and self.started_at is not None
                and not self.abort_sent
                and now - self.started_at > budget(self)
            ):
                self.abort("timeout")
            elif self.phase in (Phase.SWITCHING_OVER, Phase.POSTCOPY):
                watch_commit(self, status, now)
            return
        if new is Phase.CANCELLED and self.abort_reason == "fallback" and self.phase.cancellable:
            fall_back(self, status, now)
            return
        terminal(self, new, status, now)

    # ---- ending (the outcome module does the work) -------------------------------------
    def end(self, ending: Ending, now: float) -> None:
        """Close the job, then verify where the VM runs before writing the outcome."""
        end_run(self, ending, now)

    def conclude(self, now: float) -> float | None:
        """Read where the VM runs and write the outcome that follows it (or come back)."""
        return conclude_run(self, now)
