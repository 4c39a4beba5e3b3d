"""How a migration ends: the job's report is one witness, the platform's inventory the
other; the outcome follows the inventory, and every phase goes through the machine."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vmmove.backend import JobStatus
from vmmove.engine.ending import ABORT_WHY, KEEP_AS_IS, Ending, replace_ending
from vmmove.errors import (
    ConnectionFailed,
    MigrationCancelled,
    MigrationFailed,
    MigrationTimedOut,
    PostcopyFailed,
    PrecheckFailed,
    VMMoveError,
)
from vmmove.machine import (
    ON_EVIDENCE,
    TRANSITIONS,
    Phase,
)
from vmmove.model import (
    MigrationMode,
    PowerState,
)
from vmmove.outcomes import error_of, outcome_of

if TYPE_CHECKING:
    from vmmove.engine.run import MigrationRun

log = logging.getLogger("vmmove.engine")


def fall_back(run: MigrationRun, status: JobStatus, now: float) -> None:
    """The live job was aborted to fall back to cold: restart as a cold move, unless the
    inventory shows the live job got there first."""
    try:
        host = run.backend.locate(run.vm.id)
    except VMMoveError:
        host = None
    if run.target is not None and host == run.target.id:
        terminal(run, Phase.COMPLETED, status, now)
        return
    cleanup(run, release=False)
    run.job = None
    run.abort_sent = False
    run.abort_reason = None
    run.mode = MigrationMode.COLD
    run.enter(
        Phase.REQUESTING,
        "falling back to cold migration",
        mode=MigrationMode.COLD,
        vm_host=host or run.record.source,
    )


def terminal(run: MigrationRun, new: Phase, status: JobStatus, now: float) -> None:
    """The job says it ended: what it says is one witness; :meth:`_conclude` asks the
    inventory before anything is recorded."""
    error = status.error or status.native
    kind: type[VMMoveError] | None = None
    message = ""
    if new is Phase.CANCELLED:
        if run.abort_reason in ABORT_WHY:
            kind, message = MigrationTimedOut, ABORT_WHY[run.abort_reason]
            new = Phase.FAILED
        elif run.cancel_requested:
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
    end_run(
        run,
        Ending(
            new,
            kind,
            message,
            job_host=status.vm_host,
            figures=status.figures,
            postcopy=status.postcopy or run.phase is Phase.POSTCOPY,
            reported=status.native,
        ),
        now,
    )


def end_run(run: MigrationRun, ending: Ending, now: float) -> None:
    """Close the job, then verify where the VM runs before writing the outcome."""
    ending.since = now
    run.ending = ending
    cleanup(run)
    conclude_run(run, now)


def conclude_run(run: MigrationRun, now: float) -> float | None:
    """Read where the VM runs from the inventory and write the outcome that follows it.
    While the platform cannot be reached, try again until ``poll_grace`` runs out."""
    ending = run.ending
    assert ending is not None
    try:
        host = run.backend.locate(run.vm.id)
    except ConnectionFailed as exc:
        if not run.request_sent:
            # Nothing was ever started: the VM is where it was.
            finalize(run, ending, run.record.source, located=False)
            return None
        if now - ending.since <= run.conn.poll_grace:
            run.warn_once("locate", f"cannot read the platform's inventory, still trying: {exc}")
            return now + run.backend.poll_interval
        run.warn(
            f"location unknown: the platform's inventory could not be read for "
            f"{run.conn.poll_grace:g} s ({exc}); the job reported "
            f"{ending.reported or ending.phase} on {ending.job_host or 'no host'}. "
            "`vmmove show --refresh` or attach settles it once the platform answers"
        )
        finalize(run, ending, None, located=False)
        return None
    except VMMoveError as exc:
        run.warn(f"location unknown: reading the inventory failed: {exc}")
        finalize(run, ending, None, located=False)
        return None
    finalize(run, reconcile(run, ending, host), host, located=True)
    return None


def reconcile(run: MigrationRun, ending: Ending, host: str | None) -> Ending:
    """The job's report against the inventory: the inventory wins, loudly."""
    source = run.record.source
    target = run.target.id if run.target is not None else run.record.target
    said = ending.reported or str(ending.phase)
    if ending.phase is Phase.COMPLETED:
        if host is not None and host != source:
            if host != target:
                run.warn(f"the platform placed {run.vm.name} on {host}, not on {target} as asked")
            return ending
        where = f"runs it on its source {source}" if host else "runs it on no host"
        run.warn(
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
        if run.cancel_requested:
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
    if host is not None and host != source and run.request_sent:
        run.warn(
            f"CONTRADICTION: the job reported {said!r} ({ending.phase}: {ending.message}) "
            f"on {ending.job_host or 'its source'}, but the platform's inventory runs "
            f"{run.vm.name} on {host}: recorded as completed"
        )
        return replace_ending(ending, Phase.COMPLETED, None, "")
    if ending.job_host is not None and ending.job_host != host:
        run.warn(
            f"the job reported the VM on {ending.job_host}, the platform's inventory on "
            f"{host or 'no host'}: recorded the inventory's answer"
        )
    return ending


def finalize(run: MigrationRun, ending: Ending, vm_host: str | None, *, located: bool) -> None:
    """Write the terminal phase through the machine, with the error it implies."""
    run.ending = None
    phase, kind, message = ending.phase, ending.kind, ending.message
    evidence = False
    if phase is Phase.COMPLETED:
        run.walk(Phase.COMPLETING, via_postcopy=ending.postcopy)
        if run.cancel_requested:
            run.warn("cancel arrived as the platform committed: the migration completed")
    elif phase is Phase.CANCELLED and Phase.CANCELLED not in TRANSITIONS[run.phase]:
        phase, kind = Phase.FAILED, MigrationFailed
        message = f"{message} (the platform rolled back in {run.phase})"
    if phase is Phase.FAILED:
        if ending.postcopy and vm_host is None and run.phase is not Phase.POSTCOPY:
            run.walk(Phase.POSTCOPY)
            kind = PostcopyFailed
        if run.phase is Phase.POSTCOPY and vm_host is None:
            kind = PostcopyFailed
        evidence = (run.phase, phase) in ON_EVIDENCE
    changes: dict[str, Any] = {
        "vm_host": vm_host,
        "located_at": run.clock.time() if located else None,
        "vm_power": power_now(run) if located else None,
    }
    figures = ending.figures or run.record.figures
    started = ending.started if ending.started is not None else run.started_at
    if started is not None and figures.total_time is None:
        # A platform that reports no time: what vmmove itself saw go by.
        figures = replace(figures, total_time=run.clock.now() - started)
    changes["figures"] = figures
    if kind is not None:
        changes.update(error=message, error_type=kind.__name__)
    if isinstance(ending.cause, PrecheckFailed):
        changes["problems"] = ending.cause.problems
    run.enter(phase, message, evidence=evidence, **changes)
    run.error = error_of(run.record)
    run.conn.ledger.settle(run)


def power_now(run: MigrationRun) -> PowerState | None:
    try:
        return run.backend.vm(run.vm.id).power
    except VMMoveError:
        return None


def cleanup(run: MigrationRun, release: bool = True) -> None:
    """Let the backend close the job; trouble here is a warning, never a new outcome."""
    if run.job is not None and not run.finished:
        run.finished = True
        try:
            run.backend.finish(run.job)
        except Exception as exc:
            run.warn(f"backend cleanup failed: {type(exc).__name__}: {exc}")
    if release and run.reservation is not None:
        try:
            run.backend.release(run.reservation)
        except Exception as exc:
            run.warn(f"releasing the reservation failed: {type(exc).__name__}: {exc}")
        run.reservation = None


def fail(run: MigrationRun, exc: VMMoveError, now: float) -> float | None:
    """Bring a migration that hit an error to a true terminal record, through the
    machine: before the commit point the job is aborted; after it, the record follows
    the VM (completed with a warning, or the loud post-copy failure)."""
    if run.phase.terminal:
        return None
    if run.ending is not None:  # verifying already: the error only adds a warning
        run.warn(f"while verifying the outcome: {exc}")
        return conclude_run(run, now)
    if run.cold is not None:  # the cold move puts the VM back where it can
        run.cold._failed(exc, now)
        return conclude_run(run, now) if run.ending is not None else run.due(now)
    caps = run.backend.capabilities
    if run.job is not None and run.phase.cancellable and not run.abort_sent and caps.cancel:
        try:
            run.abort_sent = True
            run.backend.abort(run.job)
        except Exception:  # best effort: the record below says where the VM is
            log.exception("abort after error failed")
    kind: type[VMMoveError] = type(exc)
    message = str(exc)
    phase = outcome_of(exc).phase or Phase.FAILED
    if run.phase is Phase.COMPLETING:
        run.warn(f"after the commit point: {message}")
        ending = Ending(Phase.COMPLETED, None, "", cause=exc)
    elif run.phase is Phase.POSTCOPY:
        ending = Ending(Phase.FAILED, PostcopyFailed, message, postcopy=True, cause=exc)
    else:
        if not issubclass(kind, KEEP_AS_IS):
            kind = MigrationFailed
        ending = Ending(phase, kind, message, cause=exc)
    end_run(run, ending, now)
    return None if run.phase.terminal else now + run.backend.poll_interval
