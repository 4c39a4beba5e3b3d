"""A witness for the contract kit: what a backend itself reports, judged before the engine
smooths it.

The engine hides a backend's slips from users (progress that never goes back, phases filled
in, the inventory believed over the job). A plugin author needs the opposite: to be told.
:class:`Witness` wraps a backend's ``poll``, ``abort``, ``finish`` and ``locate`` on the
instance, records the raw stream, and :meth:`Witness.check` fails with the rule named.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmmove.backend import Backend, Job, JobStatus
from vmmove.engine.ending import RawReport
from vmmove.errors import VMMoveError
from vmmove.machine import PHASE_ORDER, Phase

__all__ = ["ContractViolation", "Witness"]

_WRAPPED = ("poll", "abort", "finish", "locate")


class ContractViolation(AssertionError):
    """The backend broke a rule of the contract; the message names the rule."""


#: A single poll this many intervals long is a breach even if the median is fine.
_POLL_OUTLIER = 4.0


@dataclass
class _Trace:
    job: Job
    statuses: list[tuple[float, JobStatus]] = field(default_factory=list)
    abort_at: float | None = None
    abort_phase: Phase | None = None  # the last phase the backend reported before the abort
    after_terminal: JobStatus | None = None
    located_at_end: str | None = None
    located: bool = False


class Witness:
    """Install with :meth:`install`, take off with :meth:`remove`; :meth:`check` judges."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.traces: dict[str, _Trace] = {}
        self.violations: list[str] = []
        self.poll_times: list[float] = []
        self._real: dict[str, Callable[..., Any]] = {}

    # ---- wrapping ------------------------------------------------------------------------
    def install(self) -> Witness:
        for name in _WRAPPED:
            self._real[name] = getattr(self.backend, name)
        b: Any = self.backend
        b.poll, b.abort, b.finish, b.locate = self._poll, self._abort, self._finish, self._locate
        return self

    def remove(self) -> None:
        for name in _WRAPPED:
            self.backend.__dict__.pop(name, None)
        self._real.clear()

    def _trace(self, job: Job) -> _Trace:
        return self.traces.setdefault(job.id, _Trace(job=job))

    def _poll(self, job: Job) -> JobStatus:
        began = time.monotonic()
        status: JobStatus = self._real["poll"](job)
        took = time.monotonic() - began
        # One supervisor loop polls every migration: a poll that blocks delays them all. A
        # backend that waits in poll is slow every time (judged on the median, in check());
        # one round trip slowed by the machine is not a breach unless it is far out.
        interval = self.backend.poll_interval
        self.poll_times.append(took)
        if took > _POLL_OUTLIER * interval:
            self.violations.append(
                f"poll answers at once (from the latest sample): one poll took {took:.2f} s, "
                f"more than {_POLL_OUTLIER:g} poll intervals ({interval:g} s), delaying "
                "every other migration of the connection"
            )
        self._trace(job).statuses.append((self.backend.clock.now(), status))
        return status

    def _abort(self, job: Job) -> None:
        trace = self._trace(job)
        if trace.abort_at is None:
            trace.abort_at = self.backend.clock.now()
            trace.abort_phase = trace.statuses[-1][1].phase if trace.statuses else None
        self._real["abort"](job)

    def _finish(self, job: Job) -> None:
        trace = self._trace(job)
        if trace.statuses and trace.statuses[-1][1].phase.terminal:
            # Ask once more before the backend lets go: a terminal answer must not change.
            try:
                trace.after_terminal = self._real["poll"](job)
            except VMMoveError:
                trace.after_terminal = None
            try:
                trace.located_at_end = self._real["locate"](job.vm)
                trace.located = True
            except VMMoveError:
                trace.located = False
        self._real["finish"](job)

    def _locate(self, vm_id: str) -> str | None:
        host: str | None = self._real["locate"](vm_id)
        if host is not None and host not in {h.id for h in self.backend.hosts()}:
            self.violations.append(
                f"locate() names a host that does not exist: {host!r} for VM {vm_id}"
            )
        return host

    # ---- judging -------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`ContractViolation` naming every rule the backend broke so far."""
        found = list(self.violations)
        interval = self.backend.poll_interval
        median = statistics.median(self.poll_times) if self.poll_times else 0.0
        if median > interval:
            found.append(
                "poll answers at once (from the latest sample): the median poll took "
                f"{median:.2f} s, more than the poll interval "
                f"({interval:g} s), delaying every other migration of the connection"
            )
        for trace in self.traces.values():
            found.extend(self._judge(trace))
        if found:
            raise ContractViolation(
                "the backend broke the contract:\n- " + "\n- ".join(dict.fromkeys(found))
            )

    def _judge(self, trace: _Trace) -> list[str]:
        found: list[str] = []
        statuses = [s for _, s in trace.statuses]
        raw = RawReport()  # the engine's own judgement of the backend's figures
        for status in statuses:
            found.extend(
                f"the backend's own progress never falls: {slip}" for _, slip in raw.take(status)
            )
        for a, b in itertools.pairwise(statuses):
            if a.phase.terminal:
                if b.phase is not a.phase:
                    found.append(
                        f"a terminal status never changes: {a.native!r} ({a.phase}) "
                        f"was followed by {b.native!r} ({b.phase})"
                    )
                continue
            if not b.phase.terminal and PHASE_ORDER[b.phase] < PHASE_ORDER[a.phase]:
                found.append(
                    f"phases never go backwards: {a.native!r} ({a.phase}) was followed by "
                    f"{b.native!r} ({b.phase})"
                )
        last = statuses[-1] if statuses else None
        if last is not None and trace.after_terminal is not None and last.phase.terminal:
            again = trace.after_terminal
            if again.phase is not last.phase:
                found.append(
                    f"a terminal status never changes: {last.native!r} ({last.phase}) was "
                    f"followed by {again.native!r} ({again.phase})"
                )
        if (
            last is not None
            and last.phase is Phase.COMPLETED
            and trace.abort_at is not None
            and trace.abort_phase is not None
            and trace.abort_phase.cancellable
        ):
            done_at = trace.statuses[-1][0]
            found.append(
                f"backend ignored abort; the job completed {done_at - trace.abort_at:.1f} s "
                f"after it was sent (in {trace.abort_phase}, before the commit point)"
            )
        if last is not None and last.phase.terminal and trace.located:
            said, seen = last.vm_host, trace.located_at_end
            if said is not None and said != seen:
                found.append(
                    f"the job's terminal report agrees with locate(): the job said "
                    f"{last.native!r} on {said}, locate() says {seen or 'no host'}"
                )
        return found
