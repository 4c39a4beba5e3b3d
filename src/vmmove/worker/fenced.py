"""A worker's backend: every call that changes the estate is made only while this worker's
lease on the VM's record is known to last at least :data:`CALL_MARGIN` of the lease more.

What is known: a lease begun, adopted or renewed at monotonic time t lasts until t + lease
at least; a fenced save sent at t proves it lasts until t + lease/3. A worker frozen between
its start-intent save and the platform call past the lease could have its record adopted
meanwhile. Checked here, right
before the call, on the monotonic clock, such a worker makes no call after it wakes: it
raises :class:`LeaseLost`, and the supervisor drops the run. What remains is a freeze
between this check and the request leaving the process, longer than ``CALL_MARGIN``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmmove.journals.postgres import LeaseLost

if TYPE_CHECKING:
    from vmmove.backend import Backend, Job
    from vmmove.journals.postgres import PgJournal
    from vmmove.model import VMInfo

__all__ = ["CALL_MARGIN", "FencedBackend"]

#: the share of the lease that must still be ours, by the monotonic clock, at a platform call
CALL_MARGIN = 1 / 6


class FencedBackend:
    """Delegates everything to ``inner``; the estate-changing calls check the lease first."""

    def __init__(self, inner: Backend, store: PgJournal) -> None:
        self._inner = inner
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _check(self, vm: str) -> None:
        need = self._store.lease * CALL_MARGIN
        if not self._store.holds(vm, need):
            raise LeaseLost(
                "", f"the lease on VM {vm}'s record may lapse within {need:g} s: no platform call"
            )

    def start(self, vm: VMInfo, *args: Any, **kwargs: Any) -> Any:
        self._check(vm.id)
        return self._inner.start(vm, *args, **kwargs)

    def relocate(self, vm: VMInfo, *args: Any, **kwargs: Any) -> Any:
        self._check(vm.id)
        return self._inner.relocate(vm, *args, **kwargs)

    def reserve(self, vm: VMInfo, *args: Any, **kwargs: Any) -> Any:
        self._check(vm.id)
        return self._inner.reserve(vm, *args, **kwargs)

    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        self._check(vm.id)
        self._inner.power_off(vm, force=force)

    def power_on(self, vm: VMInfo) -> None:
        self._check(vm.id)
        self._inner.power_on(vm)

    def tune(self, job: Job, action: Any) -> float | None:
        self._check(job.vm)
        return self._inner.tune(job, action)

    def abort(self, job: Job) -> None:
        self._check(job.vm)
        self._inner.abort(job)
