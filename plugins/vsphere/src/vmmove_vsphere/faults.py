"""vSphere faults -> vmmove's error tree and pre-check problems.

pyVmomi hands ``LocalizedMethodFault`` over as the fault object itself (a
``vmodl.MethodFault`` with ``.msg``). Faults are matched by their WSDL type name along the
class hierarchy, so ``InsufficientMemoryResourcesFault`` is caught as
``InsufficientResourcesFault`` and this module needs no pyVmomi import.
"""

from __future__ import annotations

from typing import Any

from vmmove.errors import (
    AuthenticationFailed,
    Conflict,
    NotFound,
    PrecheckFailed,
    ReservationRefused,
    VMMoveError,
)
from vmmove.model import Problem

__all__ = [
    "fault_names",
    "fault_text",
    "is_fault",
    "is_refusal",
    "problem",
    "refusal",
]

#: Faults that mean "the platform refused before anything moved", beyond PrecheckFailed.
_REFUSALS: tuple[tuple[str, type[VMMoveError]], ...] = (
    ("InsufficientResourcesFault", ReservationRefused),
    ("TaskInProgress", Conflict),
    ("ConcurrentAccess", Conflict),
    ("ManagedObjectNotFound", NotFound),
    ("InvalidLogin", AuthenticationFailed),
    ("NotAuthenticated", AuthenticationFailed),
)


#: Faults by which vCenter refuses a migration: the VM did not move, whether the task failed
#: while queued or after it had started (vCenter reports both shapes, so the type decides).
#: ``MigrationNotReady`` is a ``MigrationFault``, which otherwise means a failed transfer.
REFUSAL_FAULTS = (
    "InsufficientResourcesFault",
    "TaskInProgress",
    "ConcurrentAccess",
    "InvalidState",  # InvalidHostState, InvalidPowerState, ...
    "MigrationNotReady",
    "InvalidDatastore",
    "InvalidArgument",
    "NotSupported",
)

_LIMIT = 500  # a fault's message is quoted, not echoed at any length


def _text(value: Any) -> str:
    """An attribute of a fault as text, clipped; ``""`` when it cannot be rendered (str()
    of a 5000-digit int raises ValueError, a stand-in object's __str__ may raise anything)."""
    try:
        if not value:  # None, "", 0, []: no message
            return ""
        text = value if isinstance(value, str) else str(value)
    except Exception:  # whatever it is, it is not a message
        return ""
    text = text.strip()
    return text if len(text) <= _LIMIT else text[:_LIMIT] + "..."


def fault_names(fault: Any) -> list[str]:
    """The fault's WSDL type name and its ancestors', most specific first
    (``["InsufficientMemoryResourcesFault", "InsufficientResourcesFault", "VimFault", ...]``)."""
    names = []
    for cls in type(fault).__mro__:
        name = getattr(cls, "_wsdlName", None)
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names or [type(fault).__name__]


def is_fault(fault: Any, *names: str) -> bool:
    return any(n in names for n in fault_names(fault))


def is_refusal(fault: Any) -> bool:
    """A fault by which vCenter refused the move (see :data:`REFUSAL_FAULTS`)."""
    return is_fault(fault, *REFUSAL_FAULTS)


def fault_name(fault: Any) -> str:
    return fault_names(fault)[0]


def fault_text(fault: Any) -> str:
    """``InvalidHostState: The operation is not allowed ...``, with the first localized
    message when the fault carries one beyond ``msg``."""
    msg = _text(getattr(fault, "msg", None))
    items = getattr(fault, "faultMessage", None)
    # pyVmomi arrays are lists; anything else (a number, a string) carries no messages.
    for item in items if isinstance(items, list | tuple) else ():
        extra = _text(getattr(item, "message", None))
        if extra and extra not in msg:
            msg = f"{msg} ({extra})" if msg else extra
            break
    name = fault_name(fault)
    return f"{name}: {msg}" if msg else name


def problem(fault: Any, *, severity: str = "error", where: str = "") -> Problem:
    """A pre-check finding from a ``vim.vm.check.Result`` error or warning.

    ``code`` is the fault's type name (``InvalidHostState``, ``MigrationFault``...)."""
    text = fault_text(fault)
    return Problem(
        code=fault_name(fault),
        message=f"{where}: {text}" if where else text,
        severity="warning" if severity == "warning" else "error",
    )


def refusal(fault: Any, what: str, where: str = "", other: str = "") -> VMMoveError:
    """The error for a migration the platform refused: not enough resources ->
    :class:`ReservationRefused`, another task holds the VM -> :class:`Conflict` (``other``
    describes that task), a vanished object -> :class:`NotFound`; anything else (host state,
    power state, not ready, arguments, datastores, compatibility) -> :class:`PrecheckFailed`
    with the fault as its problem."""
    text = fault_text(fault)
    for name, kind in _REFUSALS:
        if is_fault(fault, name):
            if kind is Conflict and other:
                text = f"{text} (the VM is busy with {other})"
            return kind(f"{what}: {text}")
    return PrecheckFailed(f"{what}: refused by vSphere", [problem(fault, where=where)])
