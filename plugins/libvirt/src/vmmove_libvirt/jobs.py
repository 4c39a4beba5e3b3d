"""Migration jobs. Each runs its blocking libvirt calls in a worker thread; domain events and
``jobStats()`` samples tell it where the migration stands, and :meth:`status` maps that onto
vmmove's phases.

Live (``migrateToURI3``, peer-to-peer)::

    requesting      the call runs Begin/Prepare: the destination QEMU starts with -incoming
    transferring    QEMU's migration is active (libvirt reports sizes; MIGRATION_ITERATION)
    switching_over  the source paused for the final copy (source SUSPENDED_MIGRATED)
    postcopy        after migrateStartPostCopy: the destination runs and pulls the rest
                    (source SUSPENDED_POSTCOPY, destination RESUMED_POSTCOPY)
    completing      the destination runs (RESUMED_MIGRATED) or the source stopped
                    (STOPPED_MIGRATED): libvirt's Finish/Confirm cleans up the source
    completed       the call returned; figures from the JOB_COMPLETED event
    failed          the call raised; before the commit point the source still runs
    cancelled       the call raised after abortJob() and before the commit point

Cold (stop, move the definition, start)::

    requesting      setting up
    transferring    graceful shutdown (ACPI), then destroy after ``shutdown_timeout``
    switching_over  OFFLINE | PERSIST_DEST | UNDEFINE_SOURCE, then start on the target
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from vmmove.backend import JobStatus
from vmmove.errors import ConnectionFailed
from vmmove.machine import Phase
from vmmove.model import Figures, MiB, MigrationMode
from vmmove_libvirt.connection import HostConn, libvirt_error_code
from vmmove_libvirt.stats import JOB_ACTIVE, Sample, figures, sample

__all__ = ["ColdJob", "LiveJob", "MigrationJob"]

log = logging.getLogger("vmmove.libvirt")

#: Seconds between polls while a pass has far to go, and near anything worth seeing soon.
SLOW_POLL, FAST_POLL = 0.5, 0.1
#: Seconds of libvirt's dirty-rate sampling started with each live job (see LiveJob). QEMU
#: hashes a few hundred random pages per GiB at both ends of the window, so a short window
#: counts few changed pages: with 1 s, a guest dirtying 32 MiB/s read anywhere from 22 to
#: 36 MiB/s (Poisson noise) and the policy's dirty-rate step fired a pass late in 2 runs of
#: 6. 3 s counts three times the pages and still ends within the first pass of any guest
#: big enough to need the figure.
DIRTY_CALC_SECONDS = 3
_DIRTYRATE_MEASURED = 2  # virDomainDirtyRateStatus


class MigrationJob:
    """What every job shares: identity, outcome, abort request, the lock."""

    mode: MigrationMode

    def __init__(
        self, *, job_id: str, lv: Any, dom: Any, vm: str, source: HostConn, target: HostConn
    ) -> None:
        self.id = job_id
        self.lv = lv
        self.dom = dom
        self.vm = vm
        self.source = source
        self.target = target
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.ended: float | None = None
        self.outcome: Phase | None = None
        self.error: str | None = None
        self.native = "starting"
        self.abort_requested = False
        self.worker: threading.Thread | None = None

    def start(self) -> None:
        self.worker = threading.Thread(
            target=self._guarded, name=f"vmmove-libvirt-{self.id}", daemon=True
        )
        self.worker.start()

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a worker must always end its job
            log.exception("libvirt job %s crashed", self.id)
            with self.lock:
                if self.outcome is None:
                    self.ended = time.monotonic()
                    self.outcome, self.error, self.native = Phase.FAILED, str(exc), "failed"

    def run(self) -> None:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def refresh(self) -> None:
        """Take a fresh sample (called by ``poll``, outside the lock)."""

    def on_event(self, host: str, kind: str, payload: Any) -> None:
        """A domain event for this job's VM, from ``host`` (on the event loop's thread)."""

    def abort(self) -> None:
        raise NotImplementedError

    def status(self) -> JobStatus:
        raise NotImplementedError

    def poll_interval(self) -> float:
        return FAST_POLL

    def _error_text(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__


class LiveJob(MigrationJob):
    """``migrateToURI3(PEER2PEER | LIVE | PERSIST_DEST | UNDEFINE_SOURCE [| AUTO_CONVERGE]
    [| POSTCOPY] [| NON_SHARED_*])`` in a worker.

    The dirty rate: QEMU measures it at the end of each pass, so the first figure
    (``memory_iteration`` 2) averages the whole first pass, which sends all of memory; a working
    set rewritten faster than that saturates and reads as if the guest were slower. The job
    therefore also starts libvirt's own sampling (``virDomainStartDirtyRateCalc``, one second,
    started just before the migration) and reports the larger of the two until the first pass is
    over; from the second pass on, QEMU's per-pass figure alone.
    """

    mode = MigrationMode.LIVE

    def __init__(
        self,
        *,
        dest_uri: str,
        params: Mapping[str, Any],
        flags: int,
        postcopy_enabled: bool,
        auto_converge: bool,
        attached: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.dest_uri = dest_uri
        self.params = dict(params)
        self.flags = flags
        self.postcopy_enabled = postcopy_enabled
        self.auto_converge = auto_converge
        self.attached = attached
        self.call_started = attached
        self.last: Sample | None = None
        self.final: dict[str, Any] | None = None
        self.final_target: dict[str, Any] | None = None
        self.final_event = threading.Event()
        self.iteration_seen = 0
        self.transferring = False
        self.switchover = False
        self.postcopy = False
        self.committed = False
        self.source_stopped = False
        self.abort_sent_at: float | None = None
        self.sampled_dirty: float | None = None
        self.dirty_calc_at: float | None = None
        self.dirty_calc_epoch = 0.0
        self.unwatched_end = False  # an attached job found its migration over
        self.source_lost_at: float | None = None  # the call failed because libvirtd went away

    # ---- worker ----------------------------------------------------------------------------
    def start_dirty_rate_calc(self) -> None:
        try:
            self.dirty_calc_epoch = time.time()
            self.dom.startDirtyRateCalc(DIRTY_CALC_SECONDS, 0)
            self.dirty_calc_at = time.monotonic()
        except (self.lv.libvirtError, AttributeError) as exc:  # QEMU < 5.2, libvirt < 7.2
            log.debug("no dirty-rate sampling for %s: %s", self.vm, exc)

    def run(self) -> None:
        with self.lock:
            if self.abort_requested:
                self.ended = time.monotonic()
                self.outcome, self.native = Phase.CANCELLED, "cancelled before it started"
                return
            self.call_started = True
            self.native = "begin/prepare"
        error: BaseException | None = None
        try:
            self.dom.migrateToURI3(self.dest_uri, self.params, self.flags)
        except self.lv.libvirtError as exc:
            error = exc
        returned = time.monotonic()
        if error is None and not self.final_event.wait(2.0):
            # The event is queued when the job ends and the call returns at about the same time;
            # without it, ask libvirt for the completed job's statistics (kept on both sides).
            self._completed_stats()
        lost = error is not None and not self.source.alive()
        with self.lock:
            self.ended = returned
            if error is None:
                self.outcome, self.native = Phase.COMPLETED, "completed"
            elif lost:
                # The source's libvirtd went away: the outcome is whatever it finds (or did)
                # when it comes back. The backend reconnects and then watches the VM.
                self.source_lost_at = returned
                self.native = f"lost {self.source.id}'s libvirtd; waiting for it"
                self.error = f"{self.source.id}'s libvirtd went away mid-migration ({error})"
            elif self.abort_requested and not (self.committed or self.postcopy):
                self.outcome, self.native = Phase.CANCELLED, "cancelled"
                self.error = self._error_text(error)
            else:
                self.outcome, self.native = Phase.FAILED, "failed"
                self.error = self._error_text(error)

    def _completed_stats(self) -> None:
        lv = self.lv
        for host in (self.source, self.target):
            try:
                dom = host.domain(self.vm)
                stats = dom.jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED) if dom is not None else {}
            except (lv.libvirtError, ConnectionFailed) as exc:  # the last sample stands in
                log.debug("no completed-job statistics from %s: %s", host.id, exc)
                continue
            if stats.get("data_processed") is not None:
                with self.lock:
                    self.final = self.final or stats
                return

    # ---- events and samples ------------------------------------------------------------------
    def on_event(self, host: str, kind: str, payload: Any) -> None:
        lv = self.lv
        with self.lock:
            if kind == "completed":
                if host == self.source.id:
                    self.final = payload
                    self.final_event.set()
                elif host == self.target.id:
                    self.final_target = payload
                return
            if kind == "iteration" and host == self.source.id:
                self.iteration_seen = max(self.iteration_seen, int(payload))
                self.transferring = True
                return
            if kind != "lifecycle":
                return
            event, detail = payload
            if host == self.source.id:
                if event == lv.VIR_DOMAIN_EVENT_SUSPENDED:
                    if detail == lv.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED:
                        self.switchover = True
                    elif detail == lv.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY:
                        self.postcopy = True
                elif event == lv.VIR_DOMAIN_EVENT_STOPPED and (
                    detail == lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
                ):
                    self.source_stopped = self.committed = True
            elif host == self.target.id and event == lv.VIR_DOMAIN_EVENT_RESUMED:
                if detail == lv.VIR_DOMAIN_EVENT_RESUMED_MIGRATED:
                    self.committed = True
                elif detail == lv.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY:
                    self.postcopy = True

    def refresh(self) -> None:
        if self.source_lost_at is not None:
            return  # the backend reconnects first
        if self.done or not self.call_started or self.dom is None:
            if self.attached and self.dom is None and not self.done:
                self.unwatched_end = True
            return
        lv = self.lv
        try:
            stats = self.dom.jobStats()
        except lv.libvirtError:
            if self.attached:
                self.unwatched_end = True  # the source no longer knows the domain
            return
        active = stats.get("type") in JOB_ACTIVE
        if active:
            s = sample(stats)
            with self.lock:
                self.last = s
                if s.started:
                    self.transferring = True
        elif self.attached:
            self.unwatched_end = True
        now = time.monotonic()
        if (
            self.abort_requested
            and not self.attached
            and not (self.switchover or self.postcopy or self.committed)
            and (self.abort_sent_at is None or now - self.abort_sent_at > 0.5)
        ):
            # Until the call returns: libvirt may not have created its job when we first asked.
            self._send_abort()
        if (
            self.dirty_calc_at is not None
            and self.sampled_dirty is None
            and now - self.dirty_calc_at > DIRTY_CALC_SECONDS + 0.05
        ):
            self._read_dirty_rate()

    def _read_dirty_rate(self) -> None:
        lv = self.lv
        try:
            [(_, stats)] = self.source.ensure().domainListGetStats(
                [self.dom], lv.VIR_DOMAIN_STATS_DIRTYRATE
            )
        except (lv.libvirtError, ValueError):
            self.dirty_calc_at = None
            return
        if stats.get("dirtyrate.calc_status") != _DIRTYRATE_MEASURED:
            if time.monotonic() - (self.dirty_calc_at or 0.0) > DIRTY_CALC_SECONDS + 5:
                self.dirty_calc_at = None  # give up
            return
        if stats.get("dirtyrate.calc_start_time", 0) + 1 < self.dirty_calc_epoch:
            return  # an older measurement; ours is not in yet
        with self.lock:
            self.sampled_dirty = float(stats.get("dirtyrate.megabytes_per_second", 0)) * MiB
        self.dirty_calc_at = None

    # ---- control -----------------------------------------------------------------------------
    def abort(self) -> None:
        with self.lock:
            self.abort_requested = True
            if not self.call_started or self.done:
                return  # the worker sees the request before it calls libvirt
        self._send_abort()

    def _send_abort(self) -> None:
        self.abort_sent_at = time.monotonic()
        try:
            self.dom.abortJob()
        except self.lv.libvirtError as exc:
            # "no job is active": the job is still in Begin (libvirt has not started it) or
            # just ended. refresh() asks again while the migration runs; the outcome decides.
            log.debug("abortJob on %s: %s (code %s)", self.vm, exc, libvirt_error_code(exc))

    # ---- mapping -----------------------------------------------------------------------------
    def phase(self) -> Phase:
        if self.outcome is not None:
            return self.outcome
        if self.postcopy and not self.source_stopped:
            return Phase.POSTCOPY
        if self.committed:
            return Phase.COMPLETING
        if self.switchover:
            return Phase.SWITCHING_OVER
        if self.transferring:
            return Phase.TRANSFERRING
        return Phase.REQUESTING

    def status(self) -> JobStatus:
        with self.lock:
            phase = self.phase()
            s = self.last or Sample()
            iteration = max(s.iteration or 0, self.iteration_seen) or None
            dirty = s.dirty_rate
            if self.sampled_dirty is not None and (iteration or 0) <= 2:
                dirty = max(dirty or 0.0, self.sampled_dirty)
            native = self.native
            if phase is Phase.TRANSFERRING:
                native = f"migrating, pass {iteration or 1}"
            elif phase is Phase.SWITCHING_OVER:
                native = "source paused for switchover"
            elif phase is Phase.POSTCOPY:
                native = "post-copy: destination running"
            elif phase is Phase.COMPLETING:
                native = "destination running; cleaning up the source"
            figs: Figures | None = None
            if phase.terminal:
                end = self.ended or time.monotonic()
                figs = figures(
                    self.final or self.final_target,
                    self.last,
                    end - self.started,
                    completed=phase is Phase.COMPLETED,
                )
            return JobStatus(
                phase=phase,
                native=native,
                data_total=s.data_total,
                data_processed=figs.data_sent if figs else s.data_processed,
                data_remaining=0 if phase is Phase.COMPLETED else s.data_remaining,
                transfer_rate=s.transfer_rate,
                dirty_rate=dirty,
                iteration=figs.iterations if figs and figs.iterations else iteration,
                expected_downtime_ms=s.expected_downtime_ms,
                error=self.error,
                figures=figs,
                postcopy=self.postcopy,
            )

    def poll_interval(self) -> float:
        """Quick while something is about to happen: setup, the first pass (its end is when
        policies first act, and QEMU's remaining count includes zero pages, so it cannot be
        foreseen), a pass's last two seconds, switchover and after. Slow in between."""
        with self.lock:
            phase = self.phase()
            s = self.last
            iteration = max((s.iteration or 0) if s else 0, self.iteration_seen)
        if phase is not Phase.TRANSFERRING or s is None or iteration <= 1:
            return FAST_POLL
        if s.data_remaining is not None and s.transfer_rate:
            return SLOW_POLL if s.data_remaining / s.transfer_rate > 2.0 else FAST_POLL
        return SLOW_POLL


class ColdJob(MigrationJob):
    """Stop (graceful, then forced), move the definition (OFFLINE), start on the target."""

    mode = MigrationMode.COLD

    def __init__(self, *, dest_uri: str, flags: int, shutdown_timeout: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.dest_uri = dest_uri
        self.flags = flags
        self.shutdown_timeout = shutdown_timeout
        self.stage = "setup"
        self.was_running = False
        self.forced = False
        self.down_since: float | None = None
        self.downtime: float | None = None
        self.vm_host: str | None = None

    def run(self) -> None:
        lv, dom = self.lv, self.dom
        self.was_running = bool(dom.isActive())
        if self.was_running:
            with self.lock:
                if self._cancelled_before("shutdown"):
                    return
                self.stage, self.native = "shutdown", "graceful shutdown (ACPI)"
            self._shut_down()
        with self.lock:
            if self.abort_requested:
                cancel = True
            else:
                cancel = False
                self.stage, self.native = "define", "moving the definition (offline)"
        if cancel:
            self._restart_on_source("cancelled")
            return
        try:
            dom.migrateToURI3(self.dest_uri, {}, self.flags)
        except lv.libvirtError as exc:
            self._restart_on_source("failed", exc)
            return
        if self.was_running:
            with self.lock:
                self.stage, self.native = "boot", "starting on the target"
            try:
                moved = self.target.domain(self.vm)
                if moved is None:
                    raise RuntimeError("the definition is not on the target")
                moved.create()
            except (lv.libvirtError, RuntimeError) as exc:
                with self.lock:
                    self.ended = time.monotonic()
                    self.outcome, self.native = Phase.FAILED, "failed"
                    self.error = f"moved to {self.target.id}, but it did not start there: {exc}"
                    self.vm_host = self.target.id
                return
        with self.lock:
            self.ended = time.monotonic()
            if self.down_since is not None:
                self.downtime = self.ended - self.down_since
            self.outcome, self.native = Phase.COMPLETED, "completed"
            self.vm_host = self.target.id

    def _cancelled_before(self, stage: str) -> bool:
        if not self.abort_requested:
            return False
        self.ended = time.monotonic()
        self.outcome, self.native = Phase.CANCELLED, f"cancelled before {stage}"
        self.vm_host = self.source.id
        return True

    def _shut_down(self) -> None:
        lv, dom = self.lv, self.dom
        try:
            dom.shutdown()
        except lv.libvirtError as exc:
            log.info("graceful shutdown of %s refused: %s", self.vm, exc)
        deadline = time.monotonic() + self.shutdown_timeout
        while dom.isActive():
            if self.abort_requested:
                return
            if time.monotonic() > deadline:
                with self.lock:
                    self.native = f"no shutdown after {self.shutdown_timeout:g} s: destroying"
                    self.forced = True
                try:
                    dom.destroy()
                except lv.libvirtError:
                    if dom.isActive():
                        raise
                break
            time.sleep(0.1)
        self.down_since = time.monotonic()

    def _restart_on_source(self, outcome: str, error: BaseException | None = None) -> None:
        """Before the commit point: bring the VM back up where it was."""
        restart_error = ""
        if self.was_running and not self.dom.isActive():
            try:
                self.dom.create()
            except self.lv.libvirtError as exc:
                restart_error = f"; restarting it on {self.source.id} failed too: {exc}"
        with self.lock:
            self.ended = time.monotonic()
            self.vm_host = self.source.id
            if outcome == "cancelled":
                self.outcome, self.native = Phase.CANCELLED, "cancelled"
                self.error = restart_error or None
            else:
                self.outcome, self.native = Phase.FAILED, "failed"
                self.error = (self._error_text(error) if error else "failed") + restart_error

    def abort(self) -> None:
        with self.lock:
            if self.stage in ("setup", "shutdown") and not self.done:
                self.abort_requested = True

    def status(self) -> JobStatus:
        with self.lock:
            if self.outcome is not None:
                phase = self.outcome
            elif self.stage == "shutdown":
                phase = Phase.TRANSFERRING
            elif self.stage in ("define", "boot"):
                phase = Phase.SWITCHING_OVER
            else:
                phase = Phase.REQUESTING
            figs = None
            if phase.terminal:
                figs = Figures(
                    total_time=(self.ended or time.monotonic()) - self.started,
                    downtime_ms=self.downtime * 1000 if self.downtime is not None else None,
                    iterations=None,
                )
            return JobStatus(
                phase=phase,
                native=self.native,
                vm_host=self.vm_host if phase.terminal else None,
                error=self.error,
                figures=figs,
            )
