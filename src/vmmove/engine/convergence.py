"""Convergence: the policy's steps, the completion budget and the stall timeout while the
VM is transferred, and the watchdog past the commit point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmmove.backend import JobStatus
from vmmove.engine.ending import Ending
from vmmove.errors import (
    MigrationFailed,
    NotSupported,
    PostcopyFailed,
)
from vmmove.machine import Phase
from vmmove.model import MiB
from vmmove.policy import (
    Abort,
    AtIteration,
    AutoConverge,
    BudgetShare,
    ColdFallback,
    DirtyRateAbove,
    PostCopy,
    SetDowntime,
    Stalled,
    Step,
)
from vmmove.prediction import sized_throttle

if TYPE_CHECKING:
    from vmmove.engine.run import MigrationRun


def watch_commit(run: MigrationRun, status: JobStatus, now: float) -> None:
    """After the commit point nothing can be aborted, but nothing may hang either: a job
    that shows no change for the stall timeout is ended by what the inventory says."""
    sample = (run.phase, status.native, status.data_processed, status.data_remaining)
    if sample != run.commit_sample:
        run.commit_sample, run.commit_since = sample, now
        return
    limit = run.spec.stall_timeout or run.policy.stall_timeout
    if now - run.commit_since > limit:
        postcopy = status.postcopy or run.phase is Phase.POSTCOPY
        run.ending = Ending(
            Phase.FAILED,
            PostcopyFailed if postcopy else MigrationFailed,
            f"no progress for {limit:g} s in {run.phase} ({status.native}), past the "
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


def budget(run: MigrationRun) -> float:
    per_gib = run.spec.completion_budget_per_gib or run.policy.completion_budget_per_gib
    return per_gib * max(run.vm.memory / (1 << 30), 2.0)


def police(run: MigrationRun, status: JobStatus, now: float) -> None:
    """Apply the policy schedule, the completion budget and the stall timeout."""
    remaining = status.data_remaining
    if remaining is not None and (run.low_remaining is None or remaining < run.low_remaining):
        run.low_remaining, run.low_at = remaining, now
    elif run.low_remaining is None:
        run.low_at = now
    limit = run.spec.max_slowdown
    if limit is not None and status.throttle is not None and status.throttle > limit:
        slowed(run, status.throttle, limit)
        return
    stalled_for = now - run.low_at if remaining is not None else 0.0
    elapsed = now - run.started_at if run.started_at is not None else 0.0
    allowed = budget(run)
    for index, step in enumerate(run.policy.steps):
        if index in run.fired:
            continue
        trig = step.trigger
        holds = (
            (isinstance(trig, AtIteration) and (status.iteration or 0) >= trig.n)
            or (isinstance(trig, Stalled) and stalled_for >= trig.seconds)
            or (isinstance(trig, BudgetShare) and elapsed >= trig.share * allowed)
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
        run.fired.add(index)
        apply_step(run, step)
        if run.abort_sent:
            return
    stall_limit = run.spec.stall_timeout or run.policy.stall_timeout
    if elapsed > allowed:
        run.abort("timeout")
    elif stalled_for > stall_limit:
        run.abort("stall")


def slowed(run: MigrationRun, throttle: int, limit: int) -> None:
    """The platform throttles the guest past the caller's ``max_slowdown`` (QEMU raises the
    throttle each pass and libvirt cannot cap it): live cannot finish within the caller's
    limits, so the attempt ends now, as the policy's cold fallback where it has one."""
    why = f"the platform throttled the guest to {throttle} %, beyond max_slowdown {limit} %"
    for index, step in enumerate(run.policy.steps):
        if index not in run.fired and isinstance(step.action, ColdFallback):
            run.fired.add(index)
            apply_step(run, step, why=why)
            if run.abort_sent:
                return
    run.warn(f"{why}: live cannot finish within it")
    run.abort("slowdown")


def apply_step(run: MigrationRun, step: Step, why: str = "") -> None:
    """Apply one fired step; ``why``, where the engine fires it early, goes in the record."""
    action = step.action
    caps = run.backend.capabilities
    if not caps.has(action.capability):
        run.record_step(step, applied=False, reason=f"backend lacks {action.capability}")
        return
    if isinstance(action, PostCopy) and run.spec.allow_postcopy is False:
        run.record_step(step, applied=False, reason="the caller does not allow post-copy")
        return
    assert run.job is not None
    if isinstance(action, Abort):
        run.record_step(step, applied=True)
        run.abort("policy")
        return
    if isinstance(action, ColdFallback):
        if not caps.cancel:
            run.record_step(step, applied=False, reason="backend cannot abort the live job")
            return
        run.record_step(step, applied=True, reason=why)
        run.abort("fallback")
        return
    note = ""
    if isinstance(action, SetDowntime):
        cap, whose = run.spec.max_downtime, "max_downtime"
        if cap is None and run.policy.pause_cap_ms is not None:
            cap = run.policy.platform_cap_ms(run.backend.switchover_s)
            whose = (
                f"the {run.policy.name} policy's {run.policy.pause_cap_ms} ms pause cap, less "
                f"the platform's fixed {run.backend.switchover_s * 1000:g} ms of switch-over:"
            )
        if cap is not None and action.ms > cap:
            action, note = SetDowntime(ms=cap), f"clamped to {whose} {cap} ms"
    elif isinstance(action, AutoConverge) and action.sized:
        dirty, rate = run.progress.dirty_rate, run.progress.transfer_rate
        most = run.spec.max_slowdown
        if dirty and rate:
            first, more = sized_throttle(dirty, rate)
            capped = most is not None and first > most
            first = min(first, most) if most is not None else first
            action = AutoConverge(initial=first, increment=more)
            note = (
                f"throttle {first}% then +{more}% a pass, sized from {dirty / MiB:.1f} MiB/s "
                f"dirtied against {rate / MiB:.1f} MiB/s sent"
                + (" (capped by max_slowdown)" if capped else "")
            )
        else:  # where the job was started (adapt: QEMU's 20 %, or the caller's limit if lower)
            action = AutoConverge(initial=action.initial)
            note = "no measured rates to size it: the platform's own"
    if isinstance(action, SetDowntime) and action.ms <= run.downtime_ms:
        # Policies raise the limit; a later, smaller step never lowers it.
        run.record_step(step, applied=False, reason=f"limit is {run.downtime_ms} ms already")
        return
    try:
        soon = run.backend.tune(run.job, action)
    except NotSupported as exc:
        run.record_step(step, applied=False, reason=str(exc))
        return
    if soon is not None:  # the step may end the pass at once: look again sooner
        run.next_poll = soon if run.next_poll is None else min(run.next_poll, soon)
    if isinstance(action, SetDowntime):
        run.downtime_ms = action.ms
    run.record_step(step, applied=True, reason=note)
