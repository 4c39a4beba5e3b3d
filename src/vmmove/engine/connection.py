"""A connection to one estate through one backend: inventory, migrate, check, attach."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from vmmove.backend import Backend, Capabilities, Intent, JobRef
from vmmove.engine.cold import ColdMove
from vmmove.engine.ending import Ending
from vmmove.engine.eventlog import EventLog
from vmmove.engine.handle import Migration
from vmmove.engine.ledger import Ledger
from vmmove.engine.precheck import precheck
from vmmove.engine.run import MigrationRun
from vmmove.engine.supervisor import Supervisor
from vmmove.errors import (
    Conflict,
    ConnectionFailed,
    InvalidInput,
    MigrationCancelled,
    MigrationFailed,
    NotFound,
    NotSupported,
    PrecheckFailed,
    VMMoveError,
    WaitTimeout,
)
from vmmove.events import EventKind, MigrationEvent
from vmmove.machine import Phase
from vmmove.model import (
    LIMITS,
    HostInfo,
    MigrationMode,
    MigrationRecord,
    MigrationSpec,
    PowerState,
    Problem,
    VMInfo,
)
from vmmove.outcomes import error_of
from vmmove.policy import (
    Policy,
    adapt,
    resolve,
)
from vmmove.prediction import Prediction, predict_migration
from vmmove.store import MemoryStore, RecordStore

if TYPE_CHECKING:
    from vmmove.plugins import Plugins


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _keywords_checked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Typed keyword parameters for mypy, and at run time a misspelt or surplus argument
    is :class:`InvalidInput` (vmmove's own error), not Python's ``TypeError``."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidInput(f"{method.__name__}(): {exc}") from None
        return method(*args, **kwargs)

    return checked


def _given(**options: Any) -> dict[str, Any]:
    """The keyword arguments the caller gave (``None`` means "not given")."""
    return {k: v for k, v in options.items() if v is not None}


class Connection:
    """A connection to one hypervisor estate through one backend. Use :func:`vmmove.connect`."""

    def __init__(
        self,
        backend: Backend,
        *,
        uri: str,
        plugins: Plugins,
        store: RecordStore | None = None,
        max_concurrent: int | None = None,
        poll_grace: float = 120.0,
        link: float | None = None,
    ) -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise InvalidInput("max_concurrent must be at least 1")
        #: seconds a job may stay unreachable before its migration is given up on
        self.poll_grace = poll_grace
        #: bytes/s of the migration link between hosts whose platform does not report one
        #: (the caller's ``link_mib_s``): what predictions assume
        self.link = link
        self.backend = backend
        self.uri = uri
        self.backend_name = backend.scheme or type(backend).__name__
        self.plugins = plugins
        self.store: RecordStore = store or MemoryStore()
        self.max_concurrent = max_concurrent
        self.clock = backend.clock
        self._sup = Supervisor(self.clock, self.store)
        self._runs: dict[str, MigrationRun] = {}
        self.ledger = Ledger(backend, max_concurrent)
        self.event_log = EventLog()  # every migration's, in the order they happened
        self._host_names: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<vmmove.Connection {self.uri}>"

    def host_name(self, host_id: str) -> str:
        """A host's name for records (its id when the platform cannot say)."""
        name = self._host_names.get(host_id)
        if name is None:
            try:
                name = self.backend.host(host_id).name
            except VMMoveError:
                return host_id  # not cached: ask again next time
            self._host_names[host_id] = name
        return name

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def capabilities(self) -> Capabilities:
        """What the backend declares it can do."""
        return self.backend.capabilities

    def events(self, timeout: float | None = None) -> Iterator[MigrationEvent]:
        """Every event of every migration of this connection, in the order they happened
        (from the oldest still kept), until no migration is left running.

        Follows migrations started while iterating too. ``timeout`` bounds the wait for
        each next event (:class:`WaitTimeout`). Any thread may iterate, several at once.
        """
        pos = 0
        log_ = self.event_log
        while True:
            items, pos = log_.read(pos)
            yield from items
            if pos >= log_.end and all(r.phase.terminal for r in list(self._runs.values())):
                return

            def more(seen: int = pos) -> bool:
                return log_.end > seen or all(r.phase.terminal for r in list(self._runs.values()))

            if not self._sup.drive_until(more, timeout):
                raise WaitTimeout(f"no migration event for {timeout}s")

    # ---- inventory ---------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        return self.backend.hosts()

    def vms(self) -> list[VMInfo]:
        return self.backend.vms()

    def vm(self, ref: str) -> VMInfo:
        return self.backend.vm(ref)

    def host(self, ref: str) -> HostInfo:
        return self.backend.host(ref)

    # ---- migrations --------------------------------------------------------------------
    def _spec(
        self,
        vm: str | VMInfo | None,
        to: str | HostInfo | None,
        spec: MigrationSpec | None,
        options: Mapping[str, Any],
    ) -> MigrationSpec:
        if spec is not None and not isinstance(spec, MigrationSpec):
            raise InvalidInput(f"spec must be a MigrationSpec, not {type(spec).__name__}")
        vm_ref = vm.id if isinstance(vm, VMInfo) else vm
        to_ref = to.id if isinstance(to, HostInfo) else to
        if spec is None:
            if vm_ref is None:
                raise InvalidInput("name the VM to migrate")
            try:
                return MigrationSpec(vm=vm_ref, target=to_ref, **options)
            except TypeError as exc:
                raise InvalidInput(str(exc)) from None
        changes: dict[str, Any] = dict(options)
        if vm_ref is not None:
            changes["vm"] = vm_ref
        if to_ref is not None:
            changes["target"] = to_ref
        try:
            return replace(spec, **changes) if changes else spec
        except TypeError as exc:
            raise InvalidInput(str(exc)) from None

    def _policy(self, spec: MigrationSpec) -> Policy:
        """The spec's policy, as it runs for this caller on this backend (:func:`adapt`)."""
        return adapt(
            resolve(spec.policy, self.plugins.policies),
            allow_postcopy=spec.allow_postcopy,
            postcopy=self.backend.capabilities.postcopy,
            max_slowdown=spec.max_slowdown,
        )

    @_keywords_checked
    def check(
        self,
        vm: str | VMInfo | None = None,
        to: str | HostInfo | None = None,
        *,
        spec: MigrationSpec | None = None,
        mode: MigrationMode | str | None = None,
        policy: str | Policy | None = None,
        bandwidth: int | None = None,
        max_downtime: int | None = None,
        allow_postcopy: bool | None = None,
        max_slowdown: int | None = None,
        completion_budget_per_gib: float | None = None,
        stall_timeout: float | None = None,
        datastore: str | None = None,
    ) -> list[Problem]:
        """Run every pre-check without moving anything: no errors in the list means it would go.
        The keyword arguments are those of :meth:`migrate`."""
        options = _given(
            mode=mode,
            policy=policy,
            bandwidth=bandwidth,
            max_downtime=max_downtime,
            allow_postcopy=allow_postcopy,
            max_slowdown=max_slowdown,
            completion_budget_per_gib=completion_budget_per_gib,
            stall_timeout=stall_timeout,
            datastore=datastore,
        )
        spec = self._spec(vm, to, spec, options)
        policy = self._policy(spec)
        info = self.backend.vm(spec.vm)
        with self._sup.cond:
            return precheck(self, info, spec, policy).problems

    @_keywords_checked
    def predict(
        self,
        vm: str | VMInfo | None = None,
        to: str | HostInfo | None = None,
        *,
        spec: MigrationSpec | None = None,
        policy: str | Policy | None = None,
        bandwidth: int | None = None,
        max_downtime: int | None = None,
        allow_postcopy: bool | None = None,
        max_slowdown: int | None = None,
    ) -> Prediction:
        """Predict a live migration before it starts (nothing moves): total time, pause, data,
        whether it converges and which policy steps fire, from a dirty-rate sample the
        backend takes now and the link between the hosts (:mod:`vmmove.prediction`). The
        target is chosen as :meth:`migrate` would when none is named; ``PrecheckFailed``
        when no host can take the VM."""
        options = _given(
            mode=MigrationMode.LIVE,
            policy=policy,
            bandwidth=bandwidth,
            max_downtime=max_downtime,
            allow_postcopy=allow_postcopy,
            max_slowdown=max_slowdown,
        )
        spec = self._spec(vm, to, spec, options)
        pol = self._policy(spec)
        info = self.backend.vm(spec.vm)
        with self._sup.cond:
            checked = precheck(self, info, spec, pol)
        if checked.target is None:
            raise PrecheckFailed(f"no host can take {info.name}", checked.problems)
        if info.power is PowerState.RUNNING:
            sampled = self.backend.sample_dirty_rate(info)
            if sampled is not None:
                info = replace(info, dirty_rate=sampled)
        return predict_migration(
            info,
            checked.source,
            checked.target,
            pol,
            bandwidth=spec.bandwidth,
            max_downtime=spec.max_downtime,
            allow_postcopy=spec.allow_postcopy,
            max_slowdown=spec.max_slowdown,
            link=self.link,
            setup_s=self.backend.setup_s,
            switchover_s=self.backend.switchover_s,
            postcopy_switch_s=self.backend.postcopy_switch_s,
            capabilities=self.backend.capabilities,
        )

    @_keywords_checked
    def migrate(
        self,
        vm: str | VMInfo | None = None,
        to: str | HostInfo | None = None,
        *,
        spec: MigrationSpec | None = None,
        mode: MigrationMode | str | None = None,
        policy: str | Policy | None = None,
        bandwidth: int | None = None,
        max_downtime: int | None = None,
        allow_postcopy: bool | None = None,
        max_slowdown: int | None = None,
        completion_budget_per_gib: float | None = None,
        stall_timeout: float | None = None,
        datastore: str | None = None,
    ) -> Migration:
        """Start migrating ``vm`` to ``to`` (``None``: let placement choose).

        The keyword arguments override the :class:`MigrationSpec` fields of the same name
        (``spec`` or the defaults): ``mode`` (auto, live, cold), ``policy`` (a preset name
        or a :class:`Policy`), ``bandwidth`` (MiB/s), ``max_downtime`` (ms),
        ``allow_postcopy``, ``max_slowdown`` (percent), ``completion_budget_per_gib`` and
        ``stall_timeout`` (s), ``datastore``. Unknown VMs and hosts, a target that already
        runs the VM, and malformed options raise at once and change nothing; everything
        else is reported through the returned handle.

        Thread-safe: any thread may call it, and every method of :class:`Migration`.
        """
        options = _given(
            mode=mode,
            policy=policy,
            bandwidth=bandwidth,
            max_downtime=max_downtime,
            allow_postcopy=allow_postcopy,
            max_slowdown=max_slowdown,
            completion_budget_per_gib=completion_budget_per_gib,
            stall_timeout=stall_timeout,
            datastore=datastore,
        )
        spec = self._spec(vm, to, spec, options)
        resolved = self._policy(spec)
        info = self.backend.vm(spec.vm)
        target: HostInfo | None = None
        if spec.target is not None:
            target = self.backend.host(spec.target)  # NotFound now, not later
            if target.id == info.host and spec.datastore is None:
                problem = Problem(
                    code="same-host", message=f"{info.name} already runs on {target.name}"
                )
                raise PrecheckFailed(f"cannot migrate {info.name}", [problem])
        # The record holds ids from the start, whatever the caller typed (names beside them).
        spec = replace(spec, vm=info.id, target=None if target is None else target.id)
        policy = resolved
        run = MigrationRun(self, spec, info, policy)
        with self._sup.cond:
            if info.id in self.ledger.by_vm:
                other = self.ledger.by_vm[info.id].record.id
                raise Conflict(f"VM {info.name} is already migrating (migration {other})")
            self.store.begin(run.record)  # the journal's lock: no other process has this VM
            self.ledger.by_vm[info.id] = run
            self._runs[run.record.id] = run
            run.emit(EventKind.PHASE)
        self._sup.submit(run)
        return Migration(run, self._sup)

    def submit(
        self,
        vm: str | VMInfo | None = None,
        to: str | HostInfo | None = None,
        *,
        spec: MigrationSpec | None = None,
        limits: Any = None,
        **options: Any,
    ) -> str:
        """Queue a move for the workers of a PostgreSQL journal (``vmmove worker``); return
        the queue item's id. Checked like :meth:`migrate` (bad input raises, nothing is
        queued); ``limits`` (:class:`vmmove.fleet.Limits`) hold across all workers."""
        from vmmove.worker.queue import submit  # noqa: PLC0415 (psycopg on demand)

        return submit(self, self._spec(vm, to, spec, _given(**options)), limits)

    def attach(self, record_id: str) -> Migration:
        """Supervise a migration whose client went away, from its durable record.

        The backend finds the job again from the record's ``job_ref``. A job that cannot be
        found ends the record truthfully: nothing started (cancelled) or where the VM is.
        """
        with self._sup.cond:
            if record_id in self._runs:
                known = self._runs[record_id]
                if known.phase.terminal and known.record.located_at is None:
                    self._settle_location(known)
                return Migration(known, self._sup)
        record = self.store.get(record_id)
        try:
            vm = self.backend.vm(record.vm)
        except NotFound:
            if not record.phase.terminal:
                raise
            # An ended record outlives its VM: the record alone answers for it.
            vm = VMInfo(
                id=record.vm,
                name=record.vm_name,
                host=record.vm_host or record.source,
                power=PowerState.STOPPED,
                memory=0,
                vcpus=0,
            )
        try:
            found = resolve(record.policy, self.plugins.policies)
        except InvalidInput:
            found = resolve("none")  # a custom schedule is not in the record: budgets only
        spec = MigrationSpec(vm=vm.id, target=record.target, mode=record.mode, policy=found)
        damaged = ""
        limits: dict[str, Any] = {k: v for k, v in record.limits.items() if k in LIMITS}
        try:  # the caller's limits hold here too (allow_postcopy, max_slowdown, budgets...)
            spec = replace(spec, **limits)
        except InvalidInput as exc:
            damaged = f"the record's limits are damaged ({exc}): none are held"
        policy = self._policy(spec)
        run = MigrationRun(self, spec, vm, policy, record=record)
        run.error = error_of(record)
        if record.phase.terminal:
            if record.located_at is None:
                self._settle_location(run)
            return Migration(run, self._sup)
        self.store.adopt(record)
        if damaged:
            run.warn(damaged)
        with self._sup.cond:
            self._restore(run)
            self._runs[record.id] = run
            if not run.phase.terminal:
                self.ledger.by_vm[vm.id] = run
        if not run.phase.terminal:
            self._sup.submit(run)
        return Migration(run, self._sup)

    def _settle_location(self, run: MigrationRun) -> None:
        """A record that ended with the location unknown: ask the inventory now."""
        try:
            host = self.backend.locate(run.vm.id)
        except ConnectionFailed:
            return
        record = run.record
        note = f"location verified later: the platform runs {record.vm_name} on {host or 'no host'}"
        target_side = record.target is not None and host == record.target != record.source
        if (record.phase is Phase.COMPLETED) != target_side:
            note = (
                f"CONTRADICTION: {note}, which the recorded outcome ({record.phase}) does not say"
            )
        run.save(vm_host=host, located_at=self.clock.time(), warnings=(*record.warnings, note))
        run.error = error_of(run.record)

    def _restore(self, run: MigrationRun) -> None:
        """Find the job again (called with the supervisor lock held)."""
        record = run.record
        now = self.clock.now()
        if record.target is not None:
            run.target = self.backend.host(record.target)
            self.ledger.claim(run)
        saved = dict(record.job_ref)
        if not saved:  # the client went away before anything was asked of the platform
            run.end(
                Ending(
                    Phase.CANCELLED,
                    MigrationCancelled,
                    "the client went away before the job started",
                ),
                now,
            )
            return
        if saved.get("intent") == "cold":  # the engine's own: a cold move's progress
            run.request_sent = True
            run.cold = ColdMove.resume(run, saved, now)
            return
        ref = JobRef.load(saved)
        try:
            job = self.backend.attach(ref)
        except ConnectionFailed:
            if ref.intent is Intent.START:
                run.lost_start_since = now  # keep asking, as for a lost start answer
                return
            raise
        except (NotFound, NotSupported) as exc:
            kind: type[VMMoveError]
            if ref.intent is Intent.START:
                message, kind, phase = (
                    "the client went away before the job started",
                    MigrationCancelled,
                    Phase.CANCELLED,
                )
            else:
                message = f"the client went away and the job cannot be found ({exc})"
                kind, phase = MigrationFailed, Phase.FAILED
            run.end(Ending(phase, kind, message), now)
            return
        run.started(job)
        run.t0 = run.started_at or now

    def migrations(self) -> list[Migration]:
        return [Migration(r, self._sup) for r in self._runs.values()]

    def migration(self, record_id: str) -> Migration:
        try:
            return Migration(self._runs[record_id], self._sup)
        except KeyError:
            raise NotFound(f"no migration {record_id!r} in this connection") from None

    def wait_all(self, timeout: float | None = None) -> list[MigrationRecord]:
        """Wait until every migration of this connection ended; return their records."""
        runs = list(self._runs.values())
        if not self._sup.drive_until(lambda: all(r.phase.terminal for r in runs), timeout):
            raise WaitTimeout(f"migrations still running after {timeout}s")
        return [r.record for r in runs]

    def detach(self) -> None:
        """Stop supervising, as a client that dies would: nothing is aborted, migrations go
        on on the platform, and :meth:`attach` (here or in another process) picks them up
        from their records. The backend stays open."""
        self._sup.close()

    def close(self) -> None:
        self._sup.close()
        self.backend.close()
