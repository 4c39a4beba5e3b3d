"""KubeVirt's migration states mapped onto vmmove's shared phases.

KubeVirt reports no bytes: a migration is a ``VirtualMachineInstanceMigration`` (VMIM)
whose ``status.phase`` a controller advances, plus the VMI's ``status.migrationState``.
:func:`live_status` reads both and answers one :class:`~vmmove.JobStatus`; ``percent``
comes from the phase alone (and says so in ``native``), never from a byte count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import JobStatus
from vmmove.errors import ConnectionFailed
from vmmove.machine import Phase
from vmmove_kubevirt.objects import as_map, as_name, as_text

__all__ = ["COLD_PHASES", "VMIM_PHASES", "live_status"]

Obj = Mapping[str, Any]

#: ``VirtualMachineInstanceMigration.status.phase`` -> phase. "" is a migration the
#: controller has not seen yet. ``Running`` becomes ``postcopy`` once the VMI's
#: ``migrationState.mode`` is PostCopy, and ``switching_over`` (``completing`` after
#: post-copy) once its ``migrationState.completed`` is true.
VMIM_PHASES: Mapping[str, Phase] = {
    "": Phase.REQUESTING,
    "Pending": Phase.REQUESTING,
    "Scheduling": Phase.REQUESTING,
    "Scheduled": Phase.REQUESTING,
    "PreparingTarget": Phase.REQUESTING,
    "TargetReady": Phase.REQUESTING,
    "Running": Phase.TRANSFERRING,
    "Succeeded": Phase.COMPLETED,
    "Failed": Phase.FAILED,
}

#: Where a cold move (stop, re-pin, start) stands -> phase.
COLD_PHASES: Mapping[str, Phase] = {
    "queued": Phase.REQUESTING,
    "stopping": Phase.TRANSFERRING,
    "moving": Phase.TRANSFERRING,
    "starting": Phase.SWITCHING_OVER,
    "restoring": Phase.TRANSFERRING,
    "completed": Phase.COMPLETED,
    "failed": Phase.FAILED,
    "cancelled": Phase.CANCELLED,
}


def _obj(value: Any, what: str) -> Obj | None:
    """``None``, or a whole API object; anything else is nonsense from the API server."""
    if value is not None and not isinstance(value, Mapping):
        raise ConnectionFailed(f"the API server sent {what} as {type(value).__name__}")
    return value


def _state_for(vmi: Obj | None, uid: str) -> Obj:
    """The VMI's migrationState if it belongs to migration ``uid``, else {}."""
    state = as_map(as_map((vmi or {}).get("status")).get("migrationState"))
    return state if uid and state.get("migrationUid") == uid else {}


def live_status(
    vmim: Obj | None,
    vmi: Obj | None,
    *,
    uid: str,
    abort_requested: bool,
    target: str,
) -> JobStatus:
    """One poll's answer for a live migration.

    ``vmim`` is the migration object (``None`` once it is gone: deleted after an abort,
    or garbage-collected), ``vmi`` the VMI it moves, ``uid`` the migration's uid.
    """
    vmim = _obj(vmim, "a VirtualMachineInstanceMigration")
    vmi = _obj(vmi, "a VMI")
    state = _state_for(vmi, uid)
    node = as_name(as_map((vmi or {}).get("status")).get("nodeName"))
    target_node, source_node = as_name(state.get("targetNode")), as_name(state.get("sourceNode"))
    postcopy = state.get("mode") == "PostCopy"
    abort = state.get("abortStatus")
    suffix = f", abortStatus={as_text(abort)}" if abort else ""
    if vmim is None:
        # Gone. The VMI's migrationState (if the controller ever handed it over) says how
        # it ended; otherwise it was deleted before anything happened.
        if state.get("completed"):
            return JobStatus(
                phase=Phase.COMPLETED,
                native=f"deleted after completion{suffix}",
                vm_host=target_node or node,
                postcopy=postcopy,
            )
        reason = as_text(state.get("failureReason") or "")
        if abort_requested:
            return JobStatus(
                phase=Phase.CANCELLED,
                native=f"deleted{suffix or ' before the handover'}",
                vm_host=source_node or node,
                error=f"cancelled: migration object deleted{suffix}",
            )
        return JobStatus(
            phase=Phase.FAILED,
            native=f"deleted{suffix}",
            vm_host=node,
            error=reason or "the migration object was deleted by someone else",
        )
    status = as_map(vmim.get("status"))
    vmim_state = as_map(status.get("migrationState"))
    native = as_text(status.get("phase") or "")
    if native not in VMIM_PHASES:
        native = native if len(native) <= 60 else native[:60] + "..."  # not echoed at length
        return JobStatus(phase=Phase.FAILED, native=native, error=f"unknown phase {native!r}")
    phase = VMIM_PHASES[native]
    deleting = bool(as_map(vmim.get("metadata")).get("deletionTimestamp"))
    label = (native or "Created") + (" (deleting)" if deleting else "") + suffix
    if phase is Phase.TRANSFERRING:
        if state.get("completed"):
            # Switch-over seen (the target runs the VM); after post-copy that is the end.
            phase = Phase.COMPLETING if postcopy else Phase.SWITCHING_OVER
            label += ", completed on the VMI"
        elif postcopy:
            phase = Phase.POSTCOPY
            label += ", PostCopy"
        return JobStatus(phase=phase, native=label, postcopy=postcopy)
    if phase is Phase.COMPLETED:
        where = target_node or as_name(vmim_state.get("targetNode"))
        return JobStatus(
            phase=phase, native=label, vm_host=where or node or target, postcopy=postcopy
        )
    if phase is Phase.FAILED:
        why = state.get("failureReason") or vmim_state.get("failureReason")
        failure = as_text(why) if why else None
        if state.get("completed"):
            # Switch-over was seen: the target runs it. A failure after that is cleanup.
            return JobStatus(
                phase=Phase.COMPLETED,
                native=label,
                vm_host=target_node or node,
                postcopy=postcopy,
            )
        if abort_requested and (abort in (None, "Succeeded") or not state):
            return JobStatus(
                phase=Phase.CANCELLED,
                native=label,
                vm_host=source_node or node,
                error=f"cancelled{suffix}",
            )
        where = node if not postcopy else None
        return JobStatus(
            phase=Phase.FAILED,
            native=label,
            vm_host=where,
            error=failure or f"KubeVirt failed the migration in phase {_last_phase(status)}",
            postcopy=postcopy,
        )
    return JobStatus(phase=phase, native=label)


def _last_phase(status: Obj) -> str:
    """The phase before Failed, from ``phaseTransitionTimestamps``."""
    stamps = status.get("phaseTransitionTimestamps")
    phases = [as_map(s).get("phase") for s in (stamps if isinstance(stamps, list) else [])]
    before = [p for p in phases if isinstance(p, str) and p and p != "Failed"]
    return before[-1] if before else "Pending"
