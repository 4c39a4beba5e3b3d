"""Msvm_MigrationJob's states mapped onto vmmove's shared phases.

``JobState`` (CIM_ConcreteJob) arrives as a number, or as a name from a shell that prints
enums as names. Hyper-V reports a percentage and no bytes, and does not show its
switch-over: a running job is ``transferring`` until it ends.

``Terminated`` (8) is how a job ends after ``RequestStateChange(4)``; it is ``cancelled``
when vmmove asked for it, ``failed`` otherwise (someone else stopped it). When the job
object is gone (Hyper-V removes it about five minutes after it ends, and after a restart of
the WMI service) the outcome comes from where the VM is: :func:`gone_status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmmove.backend import JobStatus
from vmmove.machine import Phase
from vmmove_hyperv.psjson import as_int, as_object, as_text, enum_value

__all__ = ["JOB_STATES", "NATIVE_TO_PHASE", "gone_status", "job_status"]

#: CIM_ConcreteJob.JobState
JOB_STATES: Mapping[str, int] = {
    "New": 2,
    "Starting": 3,
    "Running": 4,
    "Suspended": 5,
    "ShuttingDown": 6,
    "Completed": 7,
    "Terminated": 8,
    "Killed": 9,
    "Exception": 10,
    "Service": 11,
    "QueryPending": 12,
}
_NAMES = {v: k for k, v in JOB_STATES.items()}

#: native state -> phase (8 and 9 become CANCELLED when vmmove asked for the cancel)
NATIVE_TO_PHASE: Mapping[int, Phase] = {
    2: Phase.REQUESTING,
    3: Phase.REQUESTING,
    4: Phase.TRANSFERRING,
    5: Phase.TRANSFERRING,
    6: Phase.TRANSFERRING,  # shutting down: being cancelled, not ended yet
    7: Phase.COMPLETED,
    8: Phase.FAILED,
    9: Phase.FAILED,
    10: Phase.FAILED,
    11: Phase.TRANSFERRING,
    12: Phase.REQUESTING,
}


def job_status(raw: Any, *, abort_requested: bool) -> JobStatus:
    """One Msvm_MigrationJob (as printed by :func:`vmmove_hyperv.scripts.jobs`)."""
    obj = as_object(raw, "Msvm_MigrationJob")
    state = enum_value(obj.get("JobState"), JOB_STATES, "Msvm_MigrationJob.JobState")
    percent = as_int(obj.get("PercentComplete"), "PercentComplete", default=0)
    percent = min(max(percent, 0), 100)
    name = _NAMES.get(state, f"vendor state {state}")
    native = f"JobState {state} {name}"
    phase = NATIVE_TO_PHASE.get(state)
    if phase is None:  # an unknown (vendor) state: not an end
        phase = Phase.TRANSFERRING if percent > 0 else Phase.REQUESTING
        native += " (unknown to vmmove)"
    if phase is Phase.FAILED:
        code = as_int(obj.get("ErrorCode"), "ErrorCode", default=0)
        text = as_text(obj.get("ErrorDescription"), "ErrorDescription", default="")
        if state in (8, 9) and abort_requested:
            return JobStatus(
                phase=Phase.CANCELLED, native=native, percent=float(percent), error="cancelled"
            )
        error = f"{text[:500] or 'the migration job ended in ' + name} (ErrorCode {code})"
        return JobStatus(phase=phase, native=native, percent=float(percent), error=error)
    if phase is Phase.COMPLETED:
        return JobStatus(phase=phase, native=native, percent=100.0)
    return JobStatus(phase=phase, native=native, percent=float(percent))


def gone_status(
    *, vm_host: str | None, source: str, target: str, abort_requested: bool, percent: float
) -> JobStatus:
    """The job object is gone: the outcome is where the VM is registered now."""
    where = vm_host or "no host"
    native = f"job gone; VM on {where}"
    if vm_host == target:
        return JobStatus(phase=Phase.COMPLETED, native=native, percent=100.0, vm_host=vm_host)
    if vm_host == source and abort_requested:
        return JobStatus(
            phase=Phase.CANCELLED,
            native=native,
            percent=percent,
            vm_host=vm_host,
            error="cancelled",
        )
    return JobStatus(
        phase=Phase.FAILED,
        native=native,
        percent=percent,
        vm_host=vm_host,
        error=f"the migration job is gone and the VM is registered on {where}",
    )
