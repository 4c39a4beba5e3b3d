"""The executor: runs a :class:`~vmmove.fleet.Plan` on a connection within
:class:`~vmmove.fleet.Limits` (see the package doc for how it schedules), with the
bookkeeping of each move's task: attempts, retries on another host, the memory and slot
ledgers per host and cluster."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from vmmove.errors import PrecheckFailed, VMMoveError, WaitTimeout
from vmmove.fleet.plan import Move, Plan, Stay, memory_limit
from vmmove.fleet.planning import plural, resolve_policy
from vmmove.fleet.report import Attempt, FleetEvent, Limits, Outcome, Report
from vmmove.fleet.tasks import Task, busy, time_left
from vmmove.machine import Phase
from vmmove.model import HostInfo, PowerState, VMInfo
from vmmove.placement import best, build_context, link_of, predict, working_set
from vmmove.policy import Policy
from vmmove.prediction import downtime_schedule

if TYPE_CHECKING:
    from vmmove.engine import Connection, Migration


class Executor:
    """Runs a :class:`Plan` on a connection within :class:`Limits`; see :func:`execute`.

    ``order``: ``"longest-first"`` (default) or ``"plan"`` (as listed: a first-in-first-out
    drain). ``link_aware``: schedule with the source links in mind (see the module doc);
    ``False`` starts whatever the limits allow. ``share_tolerance``: how much more data a
    move may send because it shares its link (0.03: 3 %). ``max_attempts``: per VM.
    ``migrate_options`` go to every ``conn.migrate`` (``max_downtime``, ``bandwidth``...).
    """

    def __init__(
        self,
        conn: Connection,
        plan: Plan,
        limits: Limits | None = None,
        *,
        policy: str | Policy | None = None,
        order: Literal["longest-first", "plan"] = "longest-first",
        link_aware: bool = True,
        share_tolerance: float = 0.03,
        max_attempts: int = 3,
        observer: Callable[[FleetEvent], None] | None = None,
        migrate_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.conn = conn
        self.plan = plan
        self.limits = limits or Limits()
        self.policy = resolve_policy(policy or plan.policy, conn.plugins.policies)
        self.order = order
        self.link_aware = link_aware
        self.share_tolerance = share_tolerance
        self.max_attempts = max(1, max_attempts)
        self.observer = observer
        self.options = dict(migrate_options or {})
        self._schedule = downtime_schedule(self.policy, self.options.get("max_downtime"))
        self._stop = False
        self._cancel_running = False
        self.running: list[tuple[Move, Migration]] = []

    # ---- control ------------------------------------------------------------------------
    def stop(self, *, cancel_running: bool = False) -> None:
        """Start nothing more; with ``cancel_running`` also cancel what runs (before the
        commit point). The report lists the rest as stayed: "stopped"."""
        self._stop = True
        self._cancel_running = self._cancel_running or cancel_running

    @property
    def stopping(self) -> bool:
        return self._stop

    def _emit(self, event: FleetEvent) -> None:
        if self.observer is not None:
            self.observer(event)

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> Report:
        conn = self.conn
        clock = conn.clock
        t0 = clock.time()
        hosts = {h.id: h for h in conn.hosts()}
        self._hosts = hosts
        self._used = {hid: h.allocated.memory for hid, h in hosts.items()}
        self._vms = {v.id: v for v in conn.vms()}
        self._limit = {hid: memory_limit(h, self.plan.headroom) for hid, h in hosts.items()}
        self._link = {hid: link_of(h) for hid, h in hosts.items()}
        self._out: dict[str, int] = {}
        self._in: dict[str, int] = {}
        self._inflight_mem: dict[str, int] = {}
        self._cluster: dict[str, int] = {}
        self._active: list[Task] = []
        self._setup_times: deque[float] = deque(maxlen=50)
        self._setup: float | None = None
        tick = float(getattr(conn.backend, "poll_interval", 1.0))
        self._tick = tick
        outcomes: dict[str, Outcome] = {}
        for stay in self.plan.stays:
            outcomes[stay.vm] = Outcome(
                vm=stay.vm,
                vm_name=stay.vm_name,
                source=stay.host,
                host=stay.host,
                status="stayed",
                reason=stay.reason,
            )
        queues: dict[str, deque[Task]] = {}
        tasks = [Task(m) for m in self.plan.moves]
        if self.order == "longest-first":
            tasks.sort(key=lambda t: (-t.priority, -t.move.memory, t.move.vm_name))
        self._queues = queues
        self._outcomes = outcomes
        for t in tasks:
            now = self._vms.get(t.move.vm)
            if now is None or now.host != t.move.source:
                where = "is gone" if now is None else f"runs on {now.host} now"
                self._settle(
                    t, f"the plan is stale: {where}", now.host if now is not None else None
                )
                continue
            t.k = self._shareable(t)
            queues.setdefault(t.move.source, deque()).append(t)
        while True:
            if self._stop and self._cancel_running:
                for task in self._active:
                    if task.migration is not None:
                        task.migration.cancel()
            if not self._stop:
                self._admit()
            if not self._active:
                if self._stop or not any(queues.values()):
                    break
                self._stuck()
                continue
            self._wait()
            self._reap()
            self._emit(FleetEvent(kind="tick"))
        for q in queues.values():
            for task in q:
                why = "stopped before it started" if self._stop else "never admitted"
                self._settle(task, why)
        t1 = clock.time()
        ordered = [outcomes[m.vm] for m in self.plan.moves if m.vm in outcomes]
        ordered += [outcomes[s.vm] for s in self.plan.stays if s.vm in outcomes]
        left = self._left_behind(outcomes)
        return Report(
            plan=self.plan,
            limits=self.limits,
            outcomes=tuple(ordered),
            started_at=t0,
            ended_at=t1,
            left_behind=left,
        )

    def _left_behind(self, outcomes: Mapping[str, Outcome]) -> tuple[Stay, ...]:
        """Every VM still on a host the plan set out to empty, with the reason the run knows."""
        if not self.plan.frees:
            return ()
        empty = set(self.plan.frees)
        out = []
        for vm in self.conn.vms():
            if vm.host not in empty:
                continue
            known = outcomes.get(vm.id)
            reason = known.reason if known is not None else "arrived while the plan ran"
            out.append(Stay(vm=vm.id, vm_name=vm.name, host=vm.host, reason=reason))
        return tuple(out)

    # ---- scheduling ---------------------------------------------------------------------
    def _shareable(self, task: Task) -> int:
        """How many moves (this one included) may share the source link before this one
        sends ``share_tolerance`` more data, or stops converging."""
        if not self.link_aware or task.alone:
            return 1 if task.alone else 1 << 30
        vm = self._vm_info(task.move)
        task.working_set = working_set(vm)
        link = self._link.get(task.move.source, link_of(None))
        top = self.limits.per_source or 8
        alone = predict(vm, link, downtime=self._schedule)
        task.robust = predict(vm, link / 2, downtime=self._schedule).converges
        k = 1
        for n in range(2, top + 1):
            shared = predict(vm, link / n, downtime=self._schedule)
            if not shared.converges or shared.data > alone.data * (1 + self.share_tolerance):
                break
            k = n
        return k

    def _vm_info(self, move: Move) -> VMInfo:
        vm = self._vms.get(move.vm)
        if vm is not None:
            return vm
        return VMInfo(
            id=move.vm,
            name=move.vm_name,
            host=move.source,
            power=PowerState.RUNNING,
            memory=move.memory,
            vcpus=move.vcpus,
        )

    def _slots_ok(self, source: str, target: str) -> bool:
        lim = self.limits
        if lim.total is not None and len(self._active) >= lim.total:
            return False
        if lim.per_source is not None and self._out.get(source, 0) >= lim.per_source:
            return False
        if lim.per_target is not None and self._in.get(target, 0) >= lim.per_target:
            return False
        if lim.per_cluster is not None:
            for key in self._clusters(source, target):
                if self._cluster.get(key, 0) >= lim.per_cluster:
                    return False
        return True

    def _source_full(self, source: str) -> bool:
        lim = self.limits
        return (lim.total is not None and len(self._active) >= lim.total) or (
            lim.per_source is not None and self._out.get(source, 0) >= lim.per_source
        )

    def _clusters(self, source: str, target: str) -> tuple[str, ...]:
        a = self._hosts[source].cluster if source in self._hosts else ""
        b = self._hosts[target].cluster if target in self._hosts else ""
        return (a,) if a == b else (a, b)

    def _room(self, task: Task, target: str) -> bool:
        """The target holds the VM on top of its VMs and every reservation in flight (the
        executor's own ledger), and the engine's pre-check will agree."""
        mem = task.move.memory
        used = self._used.get(target, 0)
        if used + mem > self._limit.get(target, 0):
            return False
        if not self.conn.capabilities.reserve:
            return True
        # Workaround: on a backend that reserves (the simulator), the engine subtracts its
        # claims for moves in flight from a free figure that already holds their
        # reservations. A move to a host filling up waits for the moves in flight to it
        # rather than be refused (docs/fleet.md, "Core changes wanted").
        capacity = self._hosts[target].capacity.memory if target in self._hosts else 0
        return used + self._inflight_mem.get(target, 0) + mem <= capacity

    def _link_ok(self, task: Task) -> bool:
        if not self.link_aware:
            return True
        consuming = [t for t in self._active if t.move.source == task.move.source and busy(t)]
        consuming = [t for t in consuming if not self._near_end(t)]
        n = len(consuming) + 1
        return n <= task.k and all(n <= t.k for t in consuming)

    def _near_end(self, task: Task) -> bool:
        """A transfer that should end before a move started now leaves its set-up."""
        m = task.migration
        if m is None or not task.robust:
            return False  # a move that cannot converge on half its link is never overlapped
        p = m.progress
        if p.phase is not Phase.TRANSFERRING or not p.transfer_rate or p.data_remaining is None:
            return False
        backlog = float(p.data_remaining)
        dirty = p.dirty_rate or 0.0
        iteration = p.iteration or 1
        if iteration <= 1 and dirty > 0:
            # Pass 1 reports what is left of it, not what the guest dirtied meanwhile.
            since = next((t.at for t in m.record.history if t.phase is Phase.TRANSFERRING), None)
            elapsed = self.conn.clock.time() - since if since is not None else 0.0
            backlog += min(float(task.working_set), dirty * elapsed)
        limit = max((s for n, s in self._schedule if n <= iteration + 1), default=0.3)
        return time_left(backlog, p.transfer_rate, dirty, limit) <= self._lead()

    def _lead(self) -> float:
        """How long a move takes from ``migrate()`` to its first byte (median of the last
        50 seen; two polls until one is seen)."""
        return self._setup if self._setup is not None else 2 * self._tick

    def _admit(self) -> None:
        sources = [s for s, q in self._queues.items() if q]
        sources.sort(key=lambda s: -self._queues[s][0].priority)
        for source in sources:
            queue = self._queues[source]
            while queue:
                started = False
                for i, task in enumerate(itertools.islice(queue, 32)):
                    if not self._slots_ok(source, task.target):
                        if self._source_full(source):
                            break
                        continue
                    if not self._link_ok(task):
                        break  # head of line: lighter moves must not starve a heavy one
                    if not self._room(task, task.target):
                        continue
                    del queue[i]
                    self._start(task)
                    started = True
                    break
                if not started:
                    break

    def _start(self, task: Task) -> None:
        move = task.move
        target = task.target
        opts = dict(self.options)
        opts.setdefault("policy", self.policy)
        attempt_no = len(task.attempts) + 1
        try:
            m = self.conn.migrate(move.vm, to=target, **opts)
        except VMMoveError as exc:
            now = self.conn.clock.time()
            task.attempts.append(
                Attempt(
                    migration="",
                    target=target,
                    started_at=now,
                    ended_at=now,
                    phase=Phase.FAILED,
                    vm_host=move.source,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
            )
            self._settle(task, f"refused at once: {exc}")
            return
        task.migration = m
        self._active.append(task)
        self._out[move.source] = self._out.get(move.source, 0) + 1
        self._in[target] = self._in.get(target, 0) + 1
        for key in self._clusters(move.source, target):
            self._cluster[key] = self._cluster.get(key, 0) + 1
        self._used[target] = self._used.get(target, 0) + move.memory
        self._inflight_mem[target] = self._inflight_mem.get(target, 0) + move.memory
        self.running.append((move, m))
        self._emit(
            FleetEvent(
                kind="start",
                vm_name=move.vm_name,
                source=move.source,
                target=target,
                attempt=attempt_no,
                migration=m,
            )
        )

    def _wait(self) -> None:
        """Let one poll interval pass (on a virtual clock: drive it), or less if the move
        expected to end first ends sooner."""
        first = min(
            self._active,
            key=lambda t: (
                t.migration.progress.eta
                if t.migration is not None and t.migration.progress.eta is not None
                else math.inf
            ),
        )
        assert first.migration is not None
        try:
            first.migration.wait(timeout=self._tick)
        except WaitTimeout:
            pass
        except VMMoveError:
            pass  # its outcome is read from the record below

    def _reap(self) -> None:
        still: list[Task] = []
        for task in self._active:
            m = task.migration
            assert m is not None
            if not m.done:
                still.append(task)
                continue
            self._release(task)
            self._finish(task, m)
        self._active = still
        self.running = [(t.move, t.migration) for t in still if t.migration is not None]

    def _release(self, task: Task) -> None:
        move, target = task.move, task.target
        self._out[move.source] -= 1
        self._in[target] -= 1
        for key in self._clusters(move.source, target):
            self._cluster[key] -= 1
        self._inflight_mem[target] -= move.memory

    def _finish(self, task: Task, m: Migration) -> None:
        rec = m.record
        move = task.move
        started = rec.created_at
        ended = rec.history[-1].at if rec.history else rec.updated_at
        for t in rec.history:
            if t.phase is Phase.TRANSFERRING:
                self._setup_times.append(t.at - started)
                self._setup = statistics.median(self._setup_times)
                break
        task.attempts.append(
            Attempt(
                migration=rec.id,
                target=task.target,
                started_at=started,
                ended_at=ended,
                phase=rec.phase,
                vm_host=rec.vm_host,
                error=rec.error,
                error_type=rec.error_type,
                alone=task.alone,
            )
        )
        if rec.phase is Phase.COMPLETED:
            self._used[move.source] = self._used.get(move.source, 0) - move.memory
            self._emit(
                FleetEvent(
                    kind="end",
                    vm_name=move.vm_name,
                    source=move.source,
                    target=task.target,
                    migration=m,
                    message="completed",
                )
            )
            self._outcomes[move.vm] = Outcome(
                vm=move.vm,
                vm_name=move.vm_name,
                source=move.source,
                host=rec.vm_host,
                status="moved",
                reason=move.reason,
                memory=move.memory,
                attempts=tuple(task.attempts),
            )
            return
        self._used[task.target] = self._used.get(task.target, 0) - move.memory
        if rec.vm_host is not None and rec.vm_host != move.source:
            # Failed past the commit point, yet the VM runs elsewhere: count it there.
            self._used[move.source] -= move.memory
            self._used[rec.vm_host] = self._used.get(rec.vm_host, 0) + move.memory
        error = rec.error or rec.phase.value
        self._emit(
            FleetEvent(
                kind="end",
                vm_name=move.vm_name,
                source=move.source,
                target=task.target,
                migration=m,
                message=error,
            )
        )
        if rec.vm_host is None:
            self._outcomes[move.vm] = Outcome(
                vm=move.vm,
                vm_name=move.vm_name,
                source=move.source,
                host=None,
                status="lost",
                reason=f"no host runs it: {error}",
                memory=move.memory,
                attempts=tuple(task.attempts),
            )
            return
        if rec.phase is Phase.CANCELLED or self._stop:
            self._settle(task, f"cancelled: {error}" if rec.phase is Phase.CANCELLED else error)
            return
        if rec.vm_host != move.source:
            self._settle(task, error)
            return
        self._retry(task, error, rec.error_type)

    def _retry(self, task: Task, error: str, error_type: str | None) -> None:
        if len(task.attempts) >= self.max_attempts:
            self._settle(task, f"{error} (after {len(task.attempts)} attempts)")
            return
        task.tried.add(task.target)
        if error_type == "MigrationTimedOut" and self.link_aware:
            task.alone = True  # could not converge sharing the link: give it the whole link
            task.k = 1
        target = self._retarget(task)
        if target is None:
            n = len(task.attempts)
            self._settle(task, f"{error} (after {n} attempt{plural(n)}); no other host can take it")
            return
        self._emit(
            FleetEvent(
                kind="retry",
                vm_name=task.move.vm_name,
                source=task.move.source,
                target=target.id,
                attempt=len(task.attempts) + 1,
                message=error,
            )
        )
        task.target = target.id
        task.move = replace(
            task.move, target=target.id, placement=f"retry after: {error}; {target.name}"
        )
        self._queues.setdefault(task.move.source, deque()).appendleft(task)

    def _retarget(self, task: Task) -> HostInfo | None:
        try:
            vm = self.conn.vm(task.move.vm)
            hosts = self.conn.hosts()
        except VMMoveError:
            return None
        avoid = set(self.plan.frees) | {task.move.source}
        ctx = build_context(hosts, self.conn.vms(), headroom=self.plan.headroom, avoid=avoid)
        reserved: dict[str, int] = ctx.reserved_memory  # type: ignore[assignment]
        inflight: dict[str, int] = ctx.inflight  # type: ignore[assignment]
        for t in self._active:
            reserved[t.target] = reserved.get(t.target, 0) + t.move.memory
            inflight[t.target] = inflight.get(t.target, 0) + 1
        for q in self._queues.values():
            for t in q:  # planned moves not started yet keep their room
                reserved[t.target] = reserved.get(t.target, 0) + t.move.memory
        candidates = [h for h in hosts if h.id not in task.tried]
        try:
            ranked = best(vm, candidates, ctx, self.conn.plugins.placement)
        except PrecheckFailed:
            return None
        for c in ranked:
            if self._used.get(c.host.id, 0) + task.move.memory <= self._limit.get(c.host.id, 0):
                return c.host
        return None

    def _stuck(self) -> None:
        """Nothing runs and nothing could start: re-place the head of each queue once, then
        report whatever still cannot start."""
        progressed = False
        for source, queue in self._queues.items():
            for task in list(queue):
                if task.target in task.tried:
                    continue
                task.tried.add(task.target)
                target = self._retarget(task)
                if target is not None and self._slots_ok(source, target.id):
                    task.target = target.id
                    task.move = replace(task.move, target=target.id)
                    progressed = True
        if progressed:
            self._admit()
            if self._active:
                return
        for queue in self._queues.values():
            while queue:
                task = queue.popleft()
                why = "no room on its target, nor on any other host, for the moves in flight"
                self._settle(task, why)

    def _settle(self, task: Task, reason: str, host: str | None = None) -> None:
        move = task.move
        host = host or move.source
        if task.attempts and task.attempts[-1].vm_host is not None:
            host = task.attempts[-1].vm_host
        self._outcomes[move.vm] = Outcome(
            vm=move.vm,
            vm_name=move.vm_name,
            source=move.source,
            host=host,
            status="stayed",
            reason=reason,
            memory=move.memory,
            attempts=tuple(task.attempts),
        )
        self._emit(
            FleetEvent(
                kind="skip",
                vm_name=move.vm_name,
                source=move.source,
                target=task.target,
                message=reason,
            )
        )


def execute(
    conn: Connection,
    plan: Plan,
    limits: Limits | None = None,
    **options: Any,
) -> Report:
    """Run ``plan`` on ``conn`` within ``limits``; return the report. Options: see
    :class:`Executor`."""
    return Executor(conn, plan, limits, **options).run()
