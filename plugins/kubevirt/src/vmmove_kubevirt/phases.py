"""KubeVirt's migration states mapped onto vmmove's shared phases.

KubeVirt reports no bytes: a migration is a ``VirtualMachineInstanceMigration`` (VMIM)
whose ``status.phase`` a controller advances, plus the VMI's ``status.migrationState``.
:func:`live_status` reads both and answers one :class:`~vmmove.JobStatus`; ``percent``
comes from the phase alone (and says so in ``native``), never from a byte count.

Read as KubeVirt really behaves across releases:

- ``migrationState`` belongs to the migration its ``migrationUid`` names. The previous
  migration's state (its flags, its ``targetNode``) stays on the VMI until the new one is
  handed to virt-handler, so a state with another uid says nothing about this one.
- ``completed`` alone never means success: KubeVirt up to 1.5 and from 1.9 on set it
  together with ``failed`` on a failure and on an abort. The outcome comes from
  ``failed``, ``abortStatus`` and the VMIM's own phase.
- Where the VM runs comes from the VMI's ``status.nodeName`` (while the VMI is
  ``Running``), never from ``targetNode``, which names the target whatever happened.
- A VMIM phase this module does not know (newer releases add some, such as the
  decentralized migration's ``WaitingForSync`` and ``Synchronizing``) is kept as native
  text and mapped by what the VMI's state says, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import JobStatus
from vmmove.errors import ConnectionFailed
from vmmove.machine import Phase
from vmmove_kubevirt.objects import as_map, as_name, as_text

__all__ = ["PHASE_RANK", "VMIM_PHASES", "live_status", "vm_node"]

Obj = Mapping[str, Any]

#: ``VirtualMachineInstanceMigration.status.phase`` -> phase. "" is a migration the
#: controller has not seen yet. ``Running`` becomes ``postcopy`` once the VMI's
#: ``migrationState.mode`` is PostCopy, and ``switching_over`` (``completing`` after
#: post-copy) once its ``migrationState.completed`` is true without ``failed``.
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

#: Forward order of the non-terminal phases a live migration reports: a phase read from
#: an unknown VMIM phase never goes back behind one already reported.
PHASE_RANK: Mapping[Phase, int] = {
    Phase.REQUESTING: 0,
    Phase.TRANSFERRING: 1,
    Phase.SWITCHING_OVER: 2,
    Phase.POSTCOPY: 3,
    Phase.COMPLETING: 4,
}


def _obj(value: Any, what: str) -> Obj | None:
    """``None``, or a whole API object; anything else is nonsense from the API server."""
    if value is not None and not isinstance(value, Mapping):
        raise ConnectionFailed(f"the API server sent {what} as {type(value).__name__}")
    return value


def state_for(vmi: Obj | None, uid: str) -> Obj:
    """The VMI's migrationState if it belongs to migration ``uid``, else {}."""
    state = as_map(as_map((vmi or {}).get("status")).get("migrationState"))
    return state if uid and state.get("migrationUid") == uid else {}


def vm_node(vmi: Obj | None) -> str | None:
    """The node the VMI runs on: ``status.nodeName`` while it is ``Running``."""
    status = as_map((vmi or {}).get("status"))
    if as_text(status.get("phase") or "") != "Running":
        return None
    return as_name(status.get("nodeName"))


def settled(vmi: Obj | None, uid: str) -> bool:
    """Whether the VMI's state for migration ``uid`` says how it ended."""
    state = state_for(vmi, uid)
    return bool(state.get("completed") or state.get("failed"))


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
    ``target`` is the node asked for; it never stands in for where the VM runs.
    """
    vmim = _obj(vmim, "a VirtualMachineInstanceMigration")
    vmi = _obj(vmi, "a VMI")
    state = state_for(vmi, uid)
    node = vm_node(vmi)
    source_node = as_name(state.get("sourceNode"))
    postcopy = state.get("mode") == "PostCopy"
    abort = as_text(state.get("abortStatus") or "")
    failed = bool(state.get("failed")) or abort == "Succeeded"
    succeeded = bool(state.get("completed")) and not failed
    suffix = f", abortStatus={abort}" if abort else ""
    reason = as_text(state.get("failureReason") or "") or None
    if vmim is None:
        # Gone. The VMI's migrationState (if the controller ever handed it over) says how
        # it ended; otherwise it was deleted before anything happened.
        if succeeded:
            return JobStatus(
                phase=Phase.COMPLETED,
                native=f"deleted after completion{suffix}",
                vm_host=node,
                postcopy=postcopy,
            )
        if abort_requested:
            return JobStatus(
                phase=Phase.CANCELLED,
                native=f"deleted{suffix or ' before the handover'}",
                vm_host=node,
                error=f"cancelled: migration object deleted{suffix}",
            )
        return JobStatus(
            phase=Phase.FAILED,
            native=f"deleted{suffix}",
            vm_host=None if postcopy else node,
            error=reason or "the migration object was deleted by someone else",
            postcopy=postcopy,
        )
    status = as_map(vmim.get("status"))
    native = as_text(status.get("phase") or "")
    deleting = bool(as_map(vmim.get("metadata")).get("deletionTimestamp"))
    if native not in VMIM_PHASES:
        return _unknown(native, state, postcopy=postcopy, failed=failed, succeeded=succeeded)
    phase = VMIM_PHASES[native]
    label = (native or "Created") + (" (deleting)" if deleting else "") + suffix
    if phase is Phase.TRANSFERRING:
        if failed:
            # The node says it failed (or the abort went through); the VMIM follows in a
            # moment. Not the end yet, and never a switch-over, whatever ``completed`` says.
            label += ", failed on the VMI"
            phase = Phase.POSTCOPY if postcopy else Phase.TRANSFERRING
        elif succeeded:
            # Switch-over seen (the target runs the VM); after post-copy that is the end.
            phase = Phase.COMPLETING if postcopy else Phase.SWITCHING_OVER
            label += ", completed on the VMI"
        elif postcopy:
            phase = Phase.POSTCOPY
            label += ", PostCopy"
        return JobStatus(phase=phase, native=label, postcopy=postcopy)
    if phase is Phase.COMPLETED:
        return JobStatus(phase=phase, native=label, vm_host=node, postcopy=postcopy)
    if phase is Phase.FAILED:
        if succeeded and node is not None and node != source_node:
            # Switch-over done and the VMI runs on the target: a failure after that is
            # cleanup trouble, not a failed migration.
            return JobStatus(phase=Phase.COMPLETED, native=label, vm_host=node, postcopy=postcopy)
        if abort_requested and (abort in ("", "Succeeded") or not state):
            return JobStatus(
                phase=Phase.CANCELLED,
                native=label,
                vm_host=node,
                error=f"cancelled{suffix}",
            )
        return JobStatus(
            phase=Phase.FAILED,
            native=label,
            vm_host=None if postcopy else node,  # a failure in post-copy may lose the VM
            error=reason or f"KubeVirt failed the migration in phase {_last_phase(status)}",
            postcopy=postcopy,
        )
    return JobStatus(phase=phase, native=label)


def _unknown(
    native: str, state: Obj, *, postcopy: bool, failed: bool, succeeded: bool
) -> JobStatus:
    """A VMIM phase this release of vmmove does not know: what the VMI says, and never an
    end (the VMIM's own ``Succeeded``/``Failed`` is the end)."""
    shown = native if len(native) <= 60 else native[:60] + "..."  # not echoed at length
    label = f"{shown} (phase unknown to vmmove; read from the VMI)"
    started = bool(state.get("startTimestamp"))
    if succeeded:
        phase = Phase.COMPLETING if postcopy else Phase.SWITCHING_OVER
    elif postcopy:
        phase = Phase.POSTCOPY
    elif started:
        phase = Phase.TRANSFERRING
    else:
        phase = Phase.REQUESTING
    if failed:
        label += ", failed on the VMI"
    return JobStatus(phase=phase, native=label, postcopy=postcopy)


def _last_phase(status: Obj) -> str:
    """The phase before Failed, from ``phaseTransitionTimestamps``."""
    stamps = status.get("phaseTransitionTimestamps")
    phases = [as_map(s).get("phase") for s in (stamps if isinstance(stamps, list) else [])]
    before = [p for p in phases if isinstance(p, str) and p and p != "Failed"]
    return before[-1] if before else "Pending"
