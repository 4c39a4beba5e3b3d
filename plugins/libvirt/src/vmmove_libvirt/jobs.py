"""Migration jobs. Every blocking libvirt call of a job runs in the job's own threads, never in
the caller's: ``poll`` answers from the latest sample at once (``jobStats()`` blocks for about
two seconds while QEMU switches over). Domain events and ``jobStats()`` samples tell a job
where the migration stands, and :meth:`status` maps that onto vmmove's phases.

Live (``migrateToURI3``, peer-to-peer)::

    requesting      the call runs Begin/Prepare: the destination QEMU starts with -incoming
    transferring    QEMU's migration is active (libvirt reports sizes; MIGRATION_ITERATION)
    switching_over  the source paused for the final copy (source SUSPENDED_MIGRATED)
    postcopy        after migrateStartPostCopy: the destination runs and pulls the rest
                    (source SUSPENDED_POSTCOPY, destination RESUMED_POSTCOPY)
    completing      the destination runs (RESUMED_MIGRATED) or the source stopped
                    (STOPPED_MIGRATED): libvirt's Finish/Confirm cleans up the source
    completed       the call returned; figures from the JOB_COMPLETED event
    failed          the call raised; before the commit point the source still runs. Or
                    post-copy broke (source paused POSTCOPY_FAILED, destination gone): then the
                    call may never return, and the job's monitor says so itself
    cancelled       the call raised after abortJob() and before the commit point

A live job has two threads: the *worker* makes the call (``migrateToURI3`` blocks until the
migration ends), the *monitor* samples ``jobStats()``, sends aborts and policy steps, watches
post-copy, and reconnects to a source whose libvirtd went away.

Relocate (the move of a stopped VM, one step of the core's cold migration)::

    requesting      the job's thread has not made the call yet
    transferring    OFFLINE | PERSIST_DEST | UNDEFINE_SOURCE (the definition moves)
    completed       the call returned: the target holds the definition
    failed          the call raised: the source still holds it
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from vmmove.backend import JobStatus
from vmmove.errors import ConnectionFailed
from vmmove.machine import Phase
from vmmove.model import Figures, MigrationMode
from vmmove_libvirt.config import redact
from vmmove_libvirt.connection import HostConn, libvirt_error_code
from vmmove_libvirt.stats import (
    DIRTYRATE_MEASURED,
    JOB_ACTIVE,
    Sample,
    completed_flags,
    dirty_rate,
    figures,
    sample,
)

__all__ = ["LiveJob", "MigrationJob", "RelocateJob"]

log = logging.getLogger("vmmove.libvirt")

#: Seconds between polls while a pass has far to go, and near anything worth seeing soon.
SLOW_POLL, FAST_POLL = 0.5, 0.1
#: Seconds between the monitor's samples: the engine's fastest poll, so an answer is never
#: older than one poll interval (a jobStats() call costs a millisecond or two).
SAMPLE_EVERY = FAST_POLL
#: Seconds between attempts to reach a source whose libvirtd went away.
RECONNECT_EVERY = 0.5
#: A sample call unanswered this long means the host is not answering (``jobStats()`` blocks
#: for about 2 s during switch-over: that is an answer on its way, not an outage).
STALE_AFTER = 15.0
#: Seconds a post-copy failure signalled by an event waits for the monitor to describe both
#: sides before poll reports it from the event alone.
ALARM_GRACE = 1.0
#: Seconds to wait for JOB_COMPLETED (the final figures) once the call returned, and once an
#: attached job found the VM on its target.
FINAL_EVENT_WAIT, SETTLE_EVENT_WAIT = 2.0, 1.0
#: Seconds a source may stay paused for the switch to post-copy after its destination's copy is
#: gone, before the job is called broken (libvirt resumes a source whose switch failed at once).
SWITCH_GRACE = 3.0
#: Seconds the monitor waits for the next policy step after one, before it samples again.
COMMAND_LINGER = 0.05
#: Seconds ``tune`` waits for libvirt to take a policy step before it returns (the step is then
#: still applied, by the monitor, in order).
TUNE_WAIT = 0.5
#: Seconds of libvirt's dirty-rate sampling started with each live job (see LiveJob). QEMU
#: hashes a few hundred random pages per GiB at both ends of the window, so a short window
#: counts few changed pages: with 1 s, a guest dirtying 32 MiB/s read anywhere from 22 to
#: 36 MiB/s (Poisson noise) and the policy's dirty-rate step fired a pass late in 2 runs of
#: 6. 3 s counts three times the pages and still ends within the first pass of any guest
#: big enough to need the figure.
DIRTY_CALC_SECONDS = 3


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
        self.request_id = ""

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

    def on_event(self, host: str, kind: str, payload: Any) -> None:
        """A domain event for this job's VM, from ``host`` (on the event loop's thread)."""

    def abort(self) -> None:
        raise NotImplementedError

    def status(self) -> JobStatus:
        raise NotImplementedError

    def poll_interval(self) -> float:
        return FAST_POLL

    def stop(self) -> None:
        """The engine is done with the job: stop watching it (a worker blocked in libvirt stays
        until libvirt returns)."""

    def _error_text(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__


class _Command:
    """A libvirt call the monitor makes for the caller (a policy step)."""

    def __init__(self, call: Callable[[], object], what: str) -> None:
        self.call = call
        self.what = what
        self.finished = threading.Event()
        self.error: BaseException | None = None


class LiveJob(MigrationJob):
    """``migrateToURI3(PEER2PEER | LIVE [| PERSIST_DEST] [| UNDEFINE_SOURCE]
    [| AUTO_CONVERGE] [| POSTCOPY] [| NON_SHARED_*])`` in a worker, watched by a monitor.

    The dirty rate: QEMU measures it at the end of each pass, so the first figure
    (``memory_iteration`` 2) averages the whole first pass, which sends all of memory; a working
    set rewritten faster than that saturates and reads as if the guest were slower. The job
    therefore also starts libvirt's own sampling (``virDomainStartDirtyRateCalc``, started just
    before the migration) and reports the larger of the two until the first pass is over; from
    the second pass on, QEMU's per-pass figure alone.
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
        name: str = "",
        request_id: str = "",
        prepare: Callable[[LiveJob], None] | None = None,
        locate: Callable[[str], str | None] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.dest_uri = dest_uri
        self.params = dict(params)
        self.flags = flags
        self.postcopy_enabled = postcopy_enabled
        self.auto_converge = auto_converge
        self.attached = attached
        self.name = name or vm_name(self.dom) or self.vm
        self.request_id = request_id
        self._prepare = prepare  # calls made in the worker just before migrateToURI3
        self._locate = locate  # the backend's locate, for a migration that ended unwatched
        self.call_started = attached
        self.last: Sample | None = None
        self.final: dict[str, Any] | None = None
        self.final_target: dict[str, Any] | None = None
        self.final_event = threading.Event()
        self.iteration_seen = 0
        self.transferring = False
        self.switchover = False
        self.postcopy = False
        self.postcopy_requested = False
        self.committed = False
        self.source_stopped = False
        self.abort_sent_at: float | None = None
        self.sampled_dirty: float | None = None
        # What the guest dirtied during the first pass (bytes), and that pass's length (s)
        self.working_set: tuple[int, float] | None = None
        self._first_pass: Sample | None = None  # the last sample of the first pass
        self.dirty_calc_at: float | None = None
        self.dirty_calc_epoch = 0.0
        self.unwatched_end = False  # an attached job found its migration over
        self.source_lost_at: float | None = None  # the call failed because libvirtd went away
        self.unreachable: str | None = None  # why the monitor could not ask the source now
        self.asking_since: float | None = None  # a sample call in flight since
        self.alarm: tuple[float, str] | None = None  # an event said post-copy broke
        self.switch_broken_at: float | None = None  # paused for the switch, destination gone
        self.vm_host: str | None = None  # where the job itself says the VM is, once it ended
        self._kick = threading.Event()
        self._stopped = threading.Event()
        self._commands: deque[_Command] = deque()
        self.monitor: threading.Thread | None = None

    # ---- threads ---------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self.watch()

    def watch(self) -> None:
        """Start the monitor (alone, for a job found again by attach)."""
        self.monitor = threading.Thread(
            target=self._monitor_loop, name=f"vmmove-libvirt-{self.id}-monitor", daemon=True
        )
        self.monitor.start()

    def kick(self) -> None:
        self._kick.set()

    def stop(self) -> None:
        self._stopped.set()
        self._kick.set()

    # ---- worker ----------------------------------------------------------------------------
    def start_dirty_rate_calc(self) -> None:
        try:
            self.dirty_calc_epoch = time.time()
            self.dom.startDirtyRateCalc(DIRTY_CALC_SECONDS, 0)
            self.dirty_calc_at = time.monotonic()
        except (self.lv.libvirtError, AttributeError) as exc:  # QEMU < 5.2, libvirt < 7.2
            log.debug("no dirty-rate sampling for %s: %s", self.vm, exc)

    def run(self) -> None:
        if self._prepare is not None and not self.abort_requested:
            self._prepare(self)
        with self.lock:
            if self.abort_requested:
                self.ended = time.monotonic()
                self.outcome, self.native = Phase.CANCELLED, "cancelled before it started"
                self.vm_host = self.source.id
                return
            self.call_started = True
            self.native = "begin/prepare"
        self._kick.set()
        error: BaseException | None = None
        try:
            self.dom.migrateToURI3(self.dest_uri, self.params, self.flags)
        except self.lv.libvirtError as exc:
            error = exc
        returned = time.monotonic()
        if error is None and not self.final_event.wait(FINAL_EVENT_WAIT):
            # The event is queued when the job ends and the call returns at about the same time;
            # without it, ask libvirt for the completed job's statistics (kept on both sides).
            self._completed_stats()
        lost = error is not None and not self.source.alive()
        if error is not None and not lost and (self.postcopy or self.postcopy_requested):
            # libvirt 9.0 returns from the call when the destination dies in post-copy (QEMU
            # 10: "qemu unexpectedly closed the monitor"), but the source stays paused and
            # keeps its job: the same broken post-copy the monitor watches for.
            try:
                state, reason = self.dom.state()[:2]
            except self.lv.libvirtError:
                state, reason = -1, -1
            if state == self.lv.VIR_DOMAIN_PAUSED and reason in (
                _const(self.lv, "VIR_DOMAIN_PAUSED_POSTCOPY", 12),
                _const(self.lv, "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED", 13),
            ):
                why = f"the migration call failed ({self._error_text(error)})"
                self._postcopy_failed(why, source_paused=True, dest=self._target_state())
                self._kick.set()
                return
        runs_on_source = False
        if error is not None and not lost:
            # The job's own word on where the VM is: libvirt resumes the source when a
            # migration fails before the switch; check that it did (one cheap call).
            runs_on_source = self._source_runs()
        with self.lock:
            if self.outcome is not None:
                return  # the monitor ended it (post-copy broke); the call returned only now
            self.ended = returned
            if lost:
                self.unreachable = f"{self.source.id}'s libvirtd went away mid-migration"
            if error is None:
                self.outcome, self.native = Phase.COMPLETED, "completed"
                self.vm_host = self.target.id
            elif lost:
                # The source's libvirtd went away: the outcome is whatever it finds (or did)
                # when it comes back. The monitor reconnects and then watches the VM.
                self.ended = None
                self.source_lost_at = returned
                self.native = f"lost {self.source.id}'s libvirtd; waiting for it"
                self.error = f"{self.source.id}'s libvirtd went away mid-migration ({error})"
            else:
                if self.abort_requested and not (self.committed or self.postcopy):
                    self.outcome, self.native = Phase.CANCELLED, "cancelled"
                else:
                    self.outcome, self.native = Phase.FAILED, "failed"
                self.error = self._error_text(error)
                if not (self.committed or self.postcopy) and runs_on_source:
                    self.vm_host = self.source.id
        self._kick.set()

    def _source_runs(self) -> bool:
        try:
            state, reason = self.dom.state()[:2]
        except self.lv.libvirtError:
            return False
        return runs(self.lv, state, reason)

    def _completed_stats(self) -> None:
        lv = self.lv
        for host in (self.source, self.target):
            try:
                dom = host.domain(self.vm)
                stats = dom.jobStats(completed_flags(lv)) if dom is not None else {}
            except (lv.libvirtError, ConnectionFailed) as exc:  # the last sample stands in
                log.debug("no completed-job statistics from %s: %s", host.id, exc)
                continue
            if stats.get("data_processed") is not None:
                with self.lock:
                    self.final = self.final or stats
                return

    # ---- events (the event loop's thread: no libvirt calls here) ---------------------------
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
                    elif detail == _const(lv, "VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED", 8):
                        self.postcopy = True
                        self._raise_alarm(f"{self.source.id} paused the VM: post-copy failed")
                elif event == lv.VIR_DOMAIN_EVENT_STOPPED and (
                    detail == lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
                ):
                    self.source_stopped = self.committed = True
            elif host == self.target.id:
                if event == lv.VIR_DOMAIN_EVENT_RESUMED:
                    if detail == lv.VIR_DOMAIN_EVENT_RESUMED_MIGRATED:
                        self.committed = True
                    elif detail == lv.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY:
                        self.postcopy = True
                    elif detail == _const(lv, "VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED", 4):
                        self._raise_alarm(f"post-copy failed on {self.target.id}")
                elif event == lv.VIR_DOMAIN_EVENT_STOPPED and self.postcopy:
                    self._raise_alarm(f"the VM's copy on {self.target.id} stopped")
        if self.alarm is not None:
            self._kick.set()

    def _raise_alarm(self, why: str) -> None:
        if self.alarm is None and self.outcome is None:
            self.alarm = (time.monotonic(), why)

    # ---- monitor ---------------------------------------------------------------------------
    def _monitor_loop(self) -> None:
        while not self._stopped.is_set():
            self._drain()
            if self.done:
                break
            try:
                self._tick()
            except Exception:  # the monitor must outlive any one bad round
                log.exception("watching libvirt job %s failed", self.id)
            self._kick.wait(RECONNECT_EVERY if self.source_lost_at else SAMPLE_EVERY)
            self._kick.clear()
        self._run_commands()  # whatever was queued as the job ended: too late to matter

    def _tick(self) -> None:
        if self.source_lost_at is not None:
            self._reconnect_source()
            return
        if not self.call_started:
            return
        if self.dom is None:  # attached to a migration whose source no longer has the VM
            self._settle_unwatched()
            return
        if self.postcopy or self.postcopy_requested or self.alarm or self.attached:
            self._watch_postcopy()
            if self.done:
                return
        self._sample()
        self._drain()  # steps given while the sample blocked go before an abort
        if self.unwatched_end and not self.done:
            self._settle_unwatched()
            return
        now = time.monotonic()
        if (
            self.abort_requested
            and not self.done
            and not (self.switchover or self.postcopy or self.committed)
            and (
                self.abort_sent_at is None or (not self.attached and now - self.abort_sent_at > 0.5)
            )
        ):
            # Until the call returns: libvirt may not have created its job when we first asked.
            self._send_abort()
        if (
            self.dirty_calc_at is not None
            and self.sampled_dirty is None
            and now - self.dirty_calc_at > DIRTY_CALC_SECONDS + 0.05
        ):
            self._read_dirty_rate()

    def _sample(self) -> None:
        lv = self.lv
        self.asking_since = time.monotonic()
        try:
            stats = self.dom.jobStats()
            s = sample(stats) if stats.get("type") in JOB_ACTIVE else None
        except lv.libvirtError as exc:
            if not self.source.alive():
                with self.lock:
                    self.unreachable = f"{self.source.id} does not answer: {exc}"
            elif self.attached:
                self.unwatched_end = True  # the source no longer knows the domain
            return
        except (ConnectionFailed, AttributeError) as exc:  # an answer that makes no sense
            with self.lock:
                self.unreachable = f"{self.source.id} sent unreadable job statistics: {exc}"
            return
        finally:
            self.asking_since = None
        with self.lock:
            self.unreachable = None
            if s is not None:
                self.last = s
                if s.started:
                    self.transferring = True
                self._note_working_set(s)
            elif self.attached:
                self.unwatched_end = True

    def _note_working_set(self, s: Sample) -> None:
        """The guest's working set, as a first pass shows it: the second pass sends what the
        guest dirtied during the first, with the pass's length. A guest that kept rewriting
        the same pages shows its working set; one that did not, what it dirties in that time,
        which a pass no longer than that cannot exceed either. libvirt keeps no such count;
        the next prediction for the VM uses it as a cap on passes up to that long (see
        finish()).

        QEMU begins pass 2 (``memory_iteration`` 2) at a sync of its dirty bitmap, once pass
        1's unsent pages fall under its switch-over threshold, and those carry over. So:
        pass 2's first ``memory_remaining``, plus the pages sent since pass 1's last sample
        (whole pages, zero or not: ``memory_processed`` counts wire bytes), less what pass 1
        still had then. Samples come every 0.1 s. Not for an adopted job (its pass 1 went
        unseen), nor once post-copy is asked for (that sync ends no pass)."""
        if self.attached or self.postcopy or self.postcopy_requested:
            self._first_pass = None
            return
        if (s.iteration or 0) <= 1:
            self._first_pass = s
            return
        last, self._first_pass = self._first_pass, None
        if s.iteration != 2 or last is None:
            return  # seen already, or one sample spanned pass 2
        left, now, then = s.memory_remaining, s.pages_sent, last.pages_sent
        tail, took = last.memory_remaining, s.elapsed_ms
        if left is None or now is None or then is None or tail is None or took is None:
            return  # a libvirt that does not count these
        dirtied = left + (now - then) * s.page_size - tail
        if dirtied > 0:
            self.working_set = dirtied, took / 1000

    def _drain(self) -> None:
        """Run the queued commands. A policy often takes several steps in one poll, each sent
        as the last one returns: after one, wait a moment for the next, so that a sample
        (``jobStats()`` can block for seconds at a pass boundary: 3.6 s measured) does not
        come between them and hold the rest up."""
        while self._run_commands():
            self._kick.wait(COMMAND_LINGER)
            self._kick.clear()

    def _run_commands(self) -> int:
        ran = 0
        while self._commands:
            ran += 1
            cmd = self._commands.popleft()
            if not self.done:
                try:
                    cmd.call()
                except self.lv.libvirtError as exc:
                    cmd.error = exc
                    log.warning("libvirt refused %s on %s: %s", cmd.what, self.name, exc)
            cmd.finished.set()
        return ran

    def submit(self, call: Callable[[], object], what: str, wait: float = TUNE_WAIT) -> None:
        """Have the monitor make ``call`` (in order with everything else it does to the job);
        wait up to ``wait`` seconds and raise what libvirt raised, if it answered by then."""
        cmd = _Command(call, what)
        self._commands.append(cmd)
        self._kick.set()
        if self.monitor is None or not self.monitor.is_alive():
            self._run_commands()
        if cmd.finished.wait(wait) and cmd.error is not None:
            raise cmd.error

    def _reconnect_source(self) -> None:
        """The source's libvirtd went away during the call. While it does not answer, say so
        (the engine keeps polling for its grace period, and records that it lost contact); once
        it answers again (it recovers or cancels the migration as it restarts), watch the VM as
        an attached job does."""
        try:
            self.source.ensure()
            dom = self.source.domain(self.vm)
        except (self.lv.libvirtError, ConnectionFailed) as exc:
            with self.lock:
                self.unreachable = f"{self.source.id}: {exc}"
            return
        with self.lock:
            self.dom, self.attached, self.source_lost_at = dom, True, None
            self.unreachable = None

    def _settle_unwatched(self) -> None:
        """An attached job whose migration ended while nobody watched: judge by where the VM is
        (the job's own report is gone with the job)."""
        if self._locate is None:
            return
        try:
            where = self._locate(self.vm)
        except ConnectionFailed as exc:
            with self.lock:
                self.unreachable = str(exc)
            return
        if where == self.target.id:
            # JOB_COMPLETED, with the figures, may still be on its way
            self.final_event.wait(SETTLE_EVENT_WAIT)
        with self.lock:
            if self.done:
                return
            self.unreachable = None
            self.ended = time.monotonic()
            elapsed = (self.final or {}).get("time_elapsed")
            if isinstance(elapsed, int):  # the platform's own duration of the whole job
                self.started = self.ended - elapsed / 1000
            self.vm_host = where
            if where == self.target.id:
                self.outcome, self.native = Phase.COMPLETED, "completed (while detached)"
                self.error = None
            else:
                self.outcome, self.native = Phase.FAILED, "ended while detached"
                why = self.error or "the migration ended while no client watched it"
                self.error = f"{why}; the VM {'runs on ' + where if where else 'runs nowhere'}"

    # ---- post-copy watchdog ------------------------------------------------------------------
    def _watch_postcopy(self) -> None:
        """Post-copy that broke never ends by itself: the source QEMU waits, paused, for a
        recovery (``postcopy-paused``), libvirt keeps its job and ``migrateToURI3`` does not
        return. Seen from here: the source paused with reason POSTCOPY_FAILED, or paused in
        post-copy while the destination's copy is gone or failed too."""
        lv = self.lv
        try:
            state, reason = self.dom.state()[:2]
        except lv.libvirtError as exc:
            if not self.source.alive():
                with self.lock:
                    self.unreachable = f"{self.source.id} does not answer: {exc}"
            return
        paused = state == lv.VIR_DOMAIN_PAUSED
        failed_here = paused and reason == _const(lv, "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED", 13)
        in_postcopy = paused and reason == _const(lv, "VIR_DOMAIN_PAUSED_POSTCOPY", 12)
        # Paused for the switch to post-copy, not yet in it: where a tester's source stayed
        # for 11 minutes once the destination died under it.
        switching = paused and reason == lv.VIR_DOMAIN_PAUSED_MIGRATION and self.postcopy_requested
        if in_postcopy or failed_here:
            with self.lock:
                self.postcopy = True
        if not (in_postcopy or failed_here or switching or self.alarm):
            self.switch_broken_at = None
            return
        dest = self._target_state()
        dest_failed = dest in ("gone", "stopped", "failed")
        if switching and not (in_postcopy or failed_here or self.alarm):
            # libvirt resumes a source whose pre-copy switch failed: give it that long before
            # calling a source that stays paused, with its destination gone, broken.
            now = time.monotonic()
            if not dest_failed:
                self.switch_broken_at = None
                return
            if self.switch_broken_at is None:
                self.switch_broken_at = now
            if now - self.switch_broken_at < SWITCH_GRACE:
                return
            why = (
                f"the VM's copy on {self.target.id} is {dest} while {self.source.id} stays "
                "paused for the switch to post-copy"
            )
            self._postcopy_failed(why, source_paused=True, dest=dest)
            return
        if not (failed_here or dest_failed or self.alarm):
            return
        if failed_here:
            why = f"{self.source.id} paused the VM: post-copy failed"
        elif dest_failed:
            why = {
                "gone": f"the VM's copy on {self.target.id} is gone",
                "stopped": f"the VM's copy on {self.target.id} stopped",
                "failed": f"post-copy failed on {self.target.id}",
            }[dest]
        else:
            why = self.alarm[1] if self.alarm else "post-copy failed"
        self._postcopy_failed(why, source_paused=paused, dest=dest)

    def _target_state(self) -> str:
        """``running``, ``paused``, ``failed`` (post-copy failed there), ``stopped``, ``gone``,
        or ``unknown`` (the target could not be asked)."""
        lv = self.lv
        try:
            dom = self.target.domain(self.vm)
            if dom is None:
                return "gone"
            state, reason = dom.state()[:2]
        except ConnectionFailed:
            return "unknown"
        except lv.libvirtError as exc:
            return "gone" if libvirt_error_code(exc) == lv.VIR_ERR_NO_DOMAIN else "unknown"
        if reason == _const(lv, "VIR_DOMAIN_RUNNING_POSTCOPY_FAILED", 11) and (
            state == lv.VIR_DOMAIN_RUNNING
        ):
            return "failed"
        if state == lv.VIR_DOMAIN_PAUSED and reason == _const(
            lv, "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED", 13
        ):
            return "failed"
        if state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED):
            return "running"
        if state == lv.VIR_DOMAIN_PAUSED:
            return "paused"
        return "stopped"

    def _postcopy_failed(self, why: str, *, source_paused: bool, dest: str) -> None:
        with self.lock:
            if self.outcome is not None:
                return
            self.ended = time.monotonic()
            began, self.postcopy = self.postcopy, True
            self.outcome, self.native = Phase.FAILED, "post-copy failed"
            self.error = self._postcopy_advice(
                why, source_paused=source_paused, dest=dest, began=began
            )
            self.vm_host = None  # neither copy holds all of the memory: the VM runs nowhere
        log.error("libvirt job %s: %s", self.id, self.error)

    def _postcopy_advice(
        self, why: str, *, source_paused: bool, dest: str, began: bool = True
    ) -> str:
        src, name = redact(self.source.uri), self.name
        persistent = bool(self.flags & self.lv.VIR_MIGRATE_UNDEFINE_SOURCE)
        text = (
            f"post-copy failed: {why}. The guest's memory is split between {self.source.id} "
            f"and {self.target.id}, and the migration cannot finish by itself "
            "(libvirt keeps its job waiting for a post-copy recovery). "
        )
        if source_paused and not began:
            return (
                f"post-copy failed: {why}. vmmove did not see post-copy begin: if the "
                f"destination never ran the guest, the paused copy on {self.source.id} is whole "
                f"and virsh -c {src} resume {name} brings the VM back; if it did run there, "
                "that copy lacks the guest's later writes: destroy it "
                f"(virsh -c {src} destroy {name}) and start the VM again."
            )
        if source_paused:
            text += (
                f"The copy on {self.source.id} is paused (post-copy failed) and lacks the pages "
                "the guest changed after the switch: never resume it. "
            )
        if dest in ("running", "paused", "failed"):
            text += (
                f"The copy on {self.target.id} still exists ({dest}). If its QEMU and the "
                "migration link are healthy, recover the migration from the source: "
                f"virsh -c {src} migrate --live --p2p --postcopy --postcopy-resume {name} "
                f"{redact(self.dest_uri)}. Otherwise destroy both copies "
                f"(virsh -c {src} destroy {name}; the same on {self.target.id}) and start the VM "
                "again: its state since the switch is lost."
            )
        else:
            where = "" if dest == "unknown" else f" ({dest})"
            text += (
                f"The copy on {self.target.id} is lost{where}, and with it the guest's state "
                f"since the switch. Destroy the paused copy (virsh -c {src} destroy {name}) and "
                "start the VM again"
                + (f" from its definition on {self.source.id}." if persistent else ".")
            )
        return text

    # ---- control -----------------------------------------------------------------------------
    def _read_dirty_rate(self) -> None:
        lv = self.lv
        try:
            [(_, stats)] = self.source.ensure().domainListGetStats(
                [self.dom], lv.VIR_DOMAIN_STATS_DIRTYRATE
            )
        except (lv.libvirtError, ConnectionFailed, ValueError):
            self.dirty_calc_at = None
            return
        rate = dirty_rate(stats, since=self.dirty_calc_epoch)
        if rate is None:  # not measured yet, or an older measurement: ours is not in yet
            measuring = stats.get("dirtyrate.calc_status") != DIRTYRATE_MEASURED
            if (
                measuring
                and time.monotonic() - (self.dirty_calc_at or 0.0) > DIRTY_CALC_SECONDS + 5
            ):
                self.dirty_calc_at = None  # give up
            return
        with self.lock:
            self.sampled_dirty = rate
        self.dirty_calc_at = None

    def abort(self) -> None:
        """Ask for the abort; the monitor sends it (``abortJob`` can block in switch-over)."""
        with self.lock:
            self.abort_requested = True
        self._kick.set()

    def _send_abort(self) -> None:
        self.abort_sent_at = time.monotonic()
        try:
            self.dom.abortJob()
        except self.lv.libvirtError as exc:
            # "no job is active": the job is still in Begin (libvirt has not started it) or
            # just ended. The monitor asks again while the migration runs; the outcome decides.
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
        """The job as last seen; never calls libvirt. :class:`ConnectionFailed` while the
        source cannot be asked (a stale answer would look like a migration standing still)."""
        now = time.monotonic()
        with self.lock:
            if self.outcome is None and self.alarm and now - self.alarm[0] > ALARM_GRACE:
                # The monitor is stuck in a call: report the break from the event alone.
                self.ended = now
                self.outcome, self.native = Phase.FAILED, "post-copy failed"
                self.postcopy = True
                self.error = self._postcopy_advice(
                    self.alarm[1], source_paused=True, dest="unknown"
                )
            if self.outcome is None:
                if self.unreachable is not None:
                    raise ConnectionFailed(self.unreachable)
                asking = self.asking_since
                if asking is not None and now - asking > STALE_AFTER:
                    raise ConnectionFailed(
                        f"{self.source.id} has not answered for {now - asking:.0f} s"
                    )
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
                end = self.ended or now
                completed = phase is Phase.COMPLETED
                figs = figures(
                    # the destination's incoming job counts only for a move that happened
                    self.final or (self.final_target if completed else None),
                    self.last,
                    end - self.started,
                    completed=completed,
                )
                if s.data_processed is not None and (figs.data_sent or 0) < s.data_processed:
                    # an aborted job's JOB_COMPLETED may count nothing: what was seen stands
                    figs = replace(figs, data_sent=s.data_processed)
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
                throttle=s.throttle if phase is Phase.TRANSFERRING else None,
                vm_host=self.vm_host if phase.terminal else None,
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


def runs(lv: Any, state: int, reason: int) -> bool:
    """Whether a domain in ``state``/``reason`` is the VM running: running, blocked or shutting
    down. Paused is not running, and neither is a destination left RUNNING with reason
    POSTCOPY_FAILED (its vCPUs wait for pages a dead source will never send)."""
    if state == lv.VIR_DOMAIN_RUNNING:
        return bool(reason != _const(lv, "VIR_DOMAIN_RUNNING_POSTCOPY_FAILED", 11))
    return bool(state in (lv.VIR_DOMAIN_BLOCKED, lv.VIR_DOMAIN_SHUTDOWN))


def vm_name(dom: Any) -> str:
    try:
        return str(dom.name()) if dom is not None else ""
    except Exception:  # a stand-in: the name only labels messages
        return ""


def _const(lv: Any, name: str, default: int) -> int:
    """A libvirt constant that older bindings may lack."""
    return int(getattr(lv, name, default))


class RelocateJob(MigrationJob):
    """Move a stopped VM's definition: one OFFLINE | PERSIST_DEST | UNDEFINE_SOURCE migration
    (peer-to-peer), in the job's thread. Stopping and starting the VM are the core's
    (``vmmove.cold``), through the backend's ``power_off``/``power_on``."""

    mode = MigrationMode.COLD

    def __init__(self, *, dest_uri: str, flags: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.dest_uri = dest_uri
        self.flags = flags
        self.vm_host: str | None = None
        self.moving = False

    def run(self) -> None:
        with self.lock:
            if self.abort_requested:
                self._end(Phase.CANCELLED, "cancelled before the move", self.source.id)
                return
            self.moving, self.native = True, "moving the definition (offline)"
        try:
            self.dom.migrateToURI3(self.dest_uri, {}, self.flags)
        except self.lv.libvirtError as exc:
            # libvirt undefines the source only once the target holds the definition.
            with self.lock:
                self.error = self._error_text(exc)
                self._end(Phase.FAILED, "failed", self.source.id)
            return
        with self.lock:
            self._end(Phase.COMPLETED, "completed", self.target.id)

    def settled(self, outcome: Phase, native: str, vm_host: str, error: str | None) -> None:
        """A move this client did not watch (attach): what the hosts' definitions say."""
        with self.lock:
            self.error = error
            self._end(outcome, native, vm_host)

    def _end(self, outcome: Phase, native: str, vm_host: str) -> None:
        self.ended = time.monotonic()
        self.outcome, self.native, self.vm_host = outcome, native, vm_host

    def abort(self) -> None:
        # An offline migration has no QEMU job to abort: only a move not yet begun stops.
        with self.lock:
            if not self.moving and not self.done:
                self.abort_requested = True

    def status(self) -> JobStatus:
        with self.lock:
            if self.outcome is not None:
                phase = self.outcome
            elif self.moving:
                phase = Phase.TRANSFERRING
            else:
                phase = Phase.REQUESTING
            figs = None
            if phase.terminal:
                total = (self.ended or time.monotonic()) - self.started
                figs = Figures(total_time=total, downtime_ms=None, iterations=None)
            return JobStatus(
                phase=phase,
                native=self.native,
                vm_host=self.vm_host if phase.terminal else None,
                error=self.error,
                figures=figs,
            )
