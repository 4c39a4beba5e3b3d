"""Every error vmmove raises, in one tree.

Catch :class:`VMMoveError` to catch them all; nothing else escapes the public API.

::

    VMMoveError
    ├── InvalidInput              bad argument, URI, spec or config; nothing was changed
    ├── NotSupported              the backend does not declare the capability asked for
    ├── BackendNotFound           no installed plugin serves the URI's scheme
    ├── ConnectionFailed          the endpoint could not be reached or spoke nonsense
    │   └── AuthenticationFailed  the endpoint refused the credentials
    ├── NotFound                  a VM, host or migration the caller named does not exist
    ├── Conflict                  another migration owns the VM (per-VM lock, platform refusal)
    ├── PrecheckFailed            pre-checks refused the move; ``.problems`` says why
    ├── ReservationRefused        the target could not reserve resources; the VM is untouched
    ├── MigrationError            a started migration did not complete
    │   ├── MigrationFailed       it failed; ``.vm_host`` names where the VM runs
    │   │   └── PostcopyFailed    it failed after the commit point: the VM may be lost
    │   ├── MigrationCancelled    it was cancelled; ``.vm_host`` names where the VM runs
    │   └── MigrationTimedOut     budget or stall timeout ran out, or a policy Abort step fired
    ├── WaitTimeout               ``Migration.wait(timeout)`` returned before the migration ended
    └── BackendProtocolError      a backend reported something impossible (a bug in the backend)

One warning category sits beside the tree: :class:`InsecureConnectionWarning`, issued when
an option switches TLS certificate verification off.

Messages never carry secrets: credentials travel as :class:`vmmove.secrets.Secret`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmmove.model import MigrationRecord, Problem

__all__ = [
    "AuthenticationFailed",
    "BackendNotFound",
    "BackendProtocolError",
    "Conflict",
    "ConnectionFailed",
    "InsecureConnectionWarning",
    "InvalidInput",
    "MigrationCancelled",
    "MigrationError",
    "MigrationFailed",
    "MigrationTimedOut",
    "NotFound",
    "NotSupported",
    "PostcopyFailed",
    "PrecheckFailed",
    "ReservationRefused",
    "VMMoveError",
    "WaitTimeout",
]


class VMMoveError(Exception):
    """Base of every error vmmove raises."""


class InvalidInput(VMMoveError, ValueError):
    """An argument, URI, spec or configuration value is malformed. Nothing was changed."""


class NotSupported(VMMoveError):
    """The backend does not declare the capability the request needs."""


class BackendNotFound(VMMoveError):
    """No installed backend plugin serves this URI scheme."""


class ConnectionFailed(VMMoveError):
    """The hypervisor endpoint could not be reached, or answered nonsense."""


class AuthenticationFailed(ConnectionFailed):
    """The endpoint refused the credentials."""


class NotFound(VMMoveError, LookupError):
    """A VM, host or migration named by the caller does not exist."""


class Conflict(VMMoveError):
    """Another migration already owns this VM."""


class PrecheckFailed(VMMoveError):
    """Pre-checks refused the migration. ``problems`` lists every reason; the VM is untouched."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        reasons = "; ".join(p.message for p in problems)
        super().__init__(f"{message}: {reasons}" if reasons else message)
        self.problems = tuple(problems)


class ReservationRefused(VMMoveError):
    """The target host could not reserve what the VM needs. The VM keeps running on its source."""


class MigrationError(VMMoveError):
    """A migration that started did not complete. ``vm_host`` is where the VM runs now."""

    def __init__(
        self, message: str, *, vm_host: str | None, record: MigrationRecord | None = None
    ) -> None:
        where = f" (VM running on {vm_host})" if vm_host else " (VM location unknown)"
        super().__init__(message + where)
        self.vm_host = vm_host
        self.record = record


class MigrationFailed(MigrationError):
    """The migration failed. Before the commit point the VM is back on (or never left)
    its source."""


class PostcopyFailed(MigrationFailed):
    """The migration failed during post-copy: neither side holds all of the VM's memory."""


class MigrationCancelled(MigrationError):
    """The migration was cancelled before its commit point; the VM runs on its source."""


class MigrationTimedOut(MigrationError):
    """The completion budget or the stall timeout ran out, the platform throttled the
    guest beyond the caller's ``max_slowdown``, or the policy's ``Abort`` step fired, and
    the migration was aborted; the VM runs on its source."""


class WaitTimeout(VMMoveError, TimeoutError):
    """``wait(timeout)`` gave up; the migration itself goes on."""


class BackendProtocolError(VMMoveError):
    """A backend reported a status that maps to no legal transition: a bug in that backend."""


class InsecureConnectionWarning(UserWarning):
    """TLS certificate verification was switched off on request (``insecure=True`` or the
    platform's own configuration): anyone on the path can pose as the server."""
