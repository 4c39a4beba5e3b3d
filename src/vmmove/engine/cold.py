"""Cold migration, orchestrated once for every backend: stop, move, start.

A backend that declares ``Capabilities.relocate_stopped`` supplies three primitives —
``power_off(vm, force=...)``, ``relocate(vm, target, spec, request_id=...)`` (a job, polled
like any other) and ``power_on(vm)`` — and this module does the rest, the same way on every
platform:

==============  ===========================================  ===============================
phase           what happens                                 on failure or cancel
==============  ===========================================  ===============================
requesting      a running VM is shut down (guest shutdown;   power it on again on its source
                powered off after the policy's
                ``shutdown_timeout``)
transferring    the stopped VM is moved (registration,       power it on again on its source
                disks)
switching_over  it is powered on on the target, within       the record says it is stopped on
                ``boot_timeout``                             the target; ``attach`` retries
==============  ===========================================  ===============================

A VM that was stopped to be moved is never left stopped silently: the record names where it
is and that it is stopped (``vm_power``), with a warning saying what to do. The step in
progress is kept in the record's ``job_ref``, so ``attach`` resumes it after a crash.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

from vmmove.backend import Job, JobRef
from vmmove.errors import (
    ConnectionFailed,
    MigrationCancelled,
    MigrationFailed,
    NotFound,
    NotSupported,
    VMMoveError,
)
from vmmove.events import EventKind
from vmmove.machine import Phase
from vmmove.model import Figures, MigrationMode, PowerState

if TYPE_CHECKING:
    from vmmove.engine.ending import Ending
    from vmmove.engine.run import MigrationRun

__all__ = ["ColdMove"]

STEPS = ("stopping", "forcing", "moving", "starting", "returning", "restoring")


class ColdMove:
    """One cold move, driven by its migration's supervisor (never blocks)."""

    def __init__(self, run: MigrationRun, *, was_running: bool, step: str, since: float) -> None:
        self.run = run
        self.backend = run.backend
        self.was_running = was_running
        self.step = step
        self.since = since
        self.started = since
        self.outcome: Ending | None = None  # what restoring the source ends in

    # ---- starting and resuming --------------------------------------------------------
    @classmethod
    def begin(cls, run: MigrationRun, now: float, request_id: str) -> ColdMove:
        was_running = run.vm.power is PowerState.RUNNING
        move = cls(run, was_running=was_running, step="", since=now)
        move.request_id = request_id
        # The migration's time: from its live attempt where the policy fell back to cold.
        move.started = run.started_at if run.started_at is not None else now
        if was_running:
            move._goto("stopping", now)
            run.backend.power_off(run.vm, force=False)
        else:
            move._move(now)
        return move

    @classmethod
    def resume(cls, run: MigrationRun, ref: dict[str, str], now: float) -> ColdMove:
        """Pick a cold move up again from the record (``attach``)."""
        step = ref.get("step", "stopping")
        if step not in STEPS:
            step = "stopping"
        move = cls(run, was_running=ref.get("was_running") == "1", step=step, since=now)
        move.request_id = ref.get("request_id", "")
        began = float(ref.get("began") or "nan")  # the connection clock's time, as "at"
        if math.isfinite(began):
            move.started = now - max(0.0, run.clock.time() - began)
        move.sent_at = float(ref.get("at") or "nan")
        job_keys = {k.removeprefix("job."): v for k, v in ref.items() if k.startswith("job.")}
        if step == "moving" and job_keys:
            run.job = run.backend.attach(JobRef(data=job_keys))
            run.finished = False
        # else at "moving": the client died inside relocate(); _moving looks for its job
        return move

    request_id = ""
    sent_at = float("nan")  # when relocate() was asked (the connection clock's time)

    def _goto(self, step: str, now: float) -> None:
        self.step, self.since = step, now
        run = self.run
        ref = {
            "intent": "cold",
            "step": step,
            "was_running": "1" if self.was_running else "0",
            "vm": run.vm.id,
            "target": run.target.id if run.target else "",
            "request_id": self.request_id,
            "at": repr(self.sent_at),
            "began": repr(run.clock.time() - (now - self.started)),
        }
        if run.job is not None and step == "moving":
            ref.update({f"job.{k}": v for k, v in run.job.ref.data.items()})
        run.save(job_ref=ref)

    # ---- the steps ---------------------------------------------------------------------
    def advance(self, now: float) -> float | None:
        run = self.run
        try:
            if run.cancel_requested and self.outcome is None and run.phase.cancellable:
                self._cancel(now)
            handler = {
                "stopping": self._stopping,
                "forcing": self._stopping,
                "moving": self._moving,
                "starting": self._starting,
                "returning": self._returning,
                "restoring": self._restoring,
            }[self.step]
            handler(now)
        except ConnectionFailed as exc:
            if not run.tolerate(exc, now):
                self._failed(exc, now)
        except VMMoveError as exc:
            self._failed(exc, now)
        if run.ending is not None:
            return run.conclude(now)
        return run.due(now)

    def _power(self) -> tuple[str, PowerState]:
        info = self.backend.vm(self.run.vm.id)
        self.run.unreachable_since = None
        return info.host, info.power

    def _stopping(self, now: float) -> None:
        run = self.run
        _, power = self._power()
        if power is PowerState.STOPPED:
            self._move(now)
            return
        limit = run.policy.shutdown_timeout
        if now - self.since <= limit:
            return
        if self.step == "stopping":
            run.warn(f"the guest did not shut down within {limit:g} s: powering it off")
            self.backend.power_off(run.vm, force=True)
            self._goto("forcing", now)
            return
        self._end(
            _ending(Phase.FAILED, MigrationFailed, "the VM could not be stopped on its source"),
            now,
        )

    def _move(self, now: float) -> None:
        run = self.run
        assert run.target is not None
        # Saved first: a client that dies inside relocate(), or an answer that is lost,
        # leaves a record that says the move was asked, for _moving to find its job.
        run.job = None
        self.sent_at = run.clock.time()
        self._goto("moving", now)
        self._started(
            self.backend.relocate(run.vm, run.target, run.spec, request_id=self.request_id), now
        )

    def _started(self, job: Job, now: float) -> None:
        run = self.run
        run.job = job
        run.finished = False
        run.raw = type(run.raw)()  # the move counts its bytes from zero
        run.started_at = run.started_at or now
        self._goto("moving", now)

    def _find_move(self, now: float) -> None:
        """The answer to relocate() was not seen: did the platform act on it?"""
        run = self.run
        assert run.target is not None
        intent = JobRef.start(
            request_id=self.request_id,
            vm=run.vm.id,
            target=run.target.id,
            mode=MigrationMode.COLD,
            at=self.sent_at if math.isfinite(self.sent_at) else None,
        )
        try:
            job = self.backend.attach(intent)
        except (NotFound, NotSupported):
            # Not acted on (a backend that carries the request id also refuses a repeat).
            self._move(now)
            return
        run.warn("the platform had acted on the move request: following its job")
        self._started(job, now)

    def _moving(self, now: float) -> None:
        run = self.run
        if run.job is None:
            self._find_move(now)
            return
        assert run.target is not None
        status = self.backend.poll(run.job)
        run.judge_report(status)
        if not status.phase.terminal:
            # The move itself fills requesting..transferring; switching over is ours.
            if status.phase in (Phase.TRANSFERRING, Phase.SWITCHING_OVER, Phase.COMPLETING):
                run.walk(Phase.TRANSFERRING)
            run.update_progress(status)
            run.emit(EventKind.PROGRESS)
            return
        self._close_job()
        self.data_sent = (status.figures.data_sent if status.figures else None) or (
            status.data_processed
        )
        if status.phase is Phase.COMPLETED:
            host, _ = self._power()
            if host == run.target.id:
                if self.was_running:
                    run.walk(Phase.SWITCHING_OVER)
                    self._goto("starting", now)
                    self.backend.power_on(self.backend.vm(run.vm.id))
                    return
                run.walk(Phase.TRANSFERRING)
                self._end(self._done(), now)
                return
            message = f"the move reported success, but the VM is registered on {host}"
        else:
            message = f"moving the stopped VM failed: {status.error or status.native}"
        kind = MigrationCancelled if status.phase is Phase.CANCELLED else MigrationFailed
        if kind is MigrationCancelled and run.cancel_requested:
            message = "cancelled"
        phase = Phase.CANCELLED if kind is MigrationCancelled else Phase.FAILED
        self._restore(_ending(phase, kind, message), now)

    def _starting(self, now: float) -> None:
        run = self.run
        assert run.target is not None
        host, power = self._power()
        if power is PowerState.RUNNING and host == run.target.id:
            self._end(self._done(), now)
            return
        why = self.backend.power_on_failure(run.vm)
        if why:
            self._go_back(f"moved to {run.target.name} but it failed to start there: {why}", now)
            return
        limit = run.policy.boot_timeout
        if now - self.since > limit:
            self._go_back(
                f"moved to {run.target.name} but it did not start there within {limit:g} s", now
            )

    def _go_back(self, why: str, now: float) -> None:
        """The VM will not start on the target: move it back and start it on its source."""
        run = self.run
        self.outcome = _ending(Phase.FAILED, MigrationFailed, why)
        source = self.backend.host(run.record.source)
        try:
            self.backend.power_off(self.backend.vm(run.vm.id), force=True)
            run.job = self.backend.relocate(
                self.backend.vm(run.vm.id), source, run.spec, request_id=f"{self.request_id}-back"
            )
        except VMMoveError as exc:
            self._stranded(f"{why}; moving it back failed: {exc}", now)
            return
        run.finished = False
        run.raw = type(run.raw)()
        run.warn(f"{why}: moving it back to {source.name}")
        self._goto("returning", now)

    def _returning(self, now: float) -> None:
        run = self.run
        assert run.job is not None
        assert self.outcome is not None
        status = self.backend.poll(run.job)
        if not status.phase.terminal:
            return
        self._close_job()
        outcome, self.outcome = self.outcome, None
        if status.phase is Phase.COMPLETED:
            self._restore(outcome, now)
        else:
            self._stranded(f"{outcome.message}; moving it back failed: {status.native}", now)

    def _restoring(self, now: float) -> None:
        run = self.run
        assert self.outcome is not None
        host, power = self._power()
        if power is PowerState.RUNNING and host == run.record.source:
            outcome, self.outcome = self.outcome, None
            self._end(outcome, now)
            return
        if now - self.since > run.policy.boot_timeout:
            outcome, self.outcome = self.outcome, None
            run.warn(
                f"{run.vm.name} is stopped on its source {run.record.source_name}: it could "
                "not be started again; start it there"
            )
            outcome.message += "; the VM could not be started again on its source"
            self._end(outcome, now)

    # ---- the ways out -------------------------------------------------------------------
    def _cancel(self, now: float) -> None:
        run = self.run
        if self.step in ("stopping", "forcing"):
            self._restore(_ending(Phase.CANCELLED, MigrationCancelled, "cancelled"), now)
        elif self.step == "moving" and run.job is not None and not run.abort_sent:
            if run.backend.capabilities.cancel:
                run.abort_sent = True
                run.abort_reason = "cancel"
                self.backend.abort(run.job)
            else:
                run.warn("cancel: the platform cannot abort this move; it goes on")
                run.abort_sent = True

    def _restore(self, outcome: Ending, now: float) -> None:
        """Put the VM back as it was on its source before the move began."""
        run = self.run
        self._close_job()
        if not self.was_running:
            self._end(outcome, now)
            return
        self.outcome = outcome
        self._goto("restoring", now)
        try:
            self.backend.power_on(self.backend.vm(run.vm.id))
        except VMMoveError as exc:
            run.warn(f"starting the VM again on its source failed: {exc}")

    def _stranded(self, why: str, now: float) -> None:
        run = self.run
        run.warn(
            f"{run.vm.name} is stopped on {run.target.name if run.target else '?'}: {why}; start "
            "it there (attach retries the start)"
        )
        self._end(_ending(Phase.FAILED, MigrationFailed, why), now)

    def _failed(self, exc: VMMoveError, now: float) -> None:
        """A primitive raised: restore what can be restored, and say where the VM is."""
        run = self.run
        if run.ending is not None:
            return
        if self.step == "starting":
            self._go_back(f"starting it on the target failed: {exc}", now)
        elif self.step == "returning":
            outcome, self.outcome = self.outcome, None
            why = outcome.message if outcome else "it did not start on the target"
            self._stranded(f"{why}; moving it back failed: {exc}", now)
        elif self.step == "restoring":
            outcome, self.outcome = self.outcome, None
            assert outcome is not None
            outcome.message += f"; starting it again on its source failed: {exc}"
            self._end(outcome, now)
        else:
            if self.step == "moving" and run.job is not None and run.backend.capabilities.cancel:
                with contextlib.suppress(VMMoveError):  # best effort: restoring follows
                    self.backend.abort(run.job)
            kind = type(exc) if isinstance(exc, MigrationFailed) else MigrationFailed
            self._restore(_ending(Phase.FAILED, kind, str(exc)), now)

    def _close_job(self) -> None:
        run = self.run
        if run.job is not None and not run.finished:
            run.finished = True
            try:
                self.backend.finish(run.job)
            except Exception as exc:
                run.warn(f"backend cleanup failed: {type(exc).__name__}: {exc}")

    data_sent: int | None = None

    def _done(self) -> Ending:
        figures = Figures(total_time=None, downtime_ms=None, data_sent=self.data_sent)
        return _ending(Phase.COMPLETED, None, "", figures=figures)

    def _end(self, outcome: Ending, now: float) -> None:
        # The total is taken when the outcome is written (after the inventory confirmed it),
        # from the start of the move, or of the live attempt it fell back from.
        outcome.started = self.started
        self.run.end(outcome, now)


def _ending(
    phase: Phase,
    kind: type[VMMoveError] | None,
    message: str,
    *,
    figures: Figures | None = None,
) -> Ending:
    from vmmove.engine.ending import Ending  # noqa: PLC0415 (the engine imports this module)

    return Ending(phase, kind, message, figures=figures)
