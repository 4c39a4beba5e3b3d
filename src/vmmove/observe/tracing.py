"""OpenTelemetry traces of migrations: one span per migration, a child span per phase.

The migration's span starts in the caller's context: ``migrate()`` emits its first event
on the caller's thread, so the span whose context is current there becomes its parent.
Policy steps and warnings are events on the span of the phase they happened in; an error
is recorded on the migration's span (its status is ERROR when it failed). Span times come
from the record, on the connection's clock: a simulated migration shows simulated time.

Imports opentelemetry (the API only; the application chooses the SDK and exporter). The
tracer is the global provider's unless :func:`use` names another one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider

from vmmove.machine import Phase
from vmmove.observe.labels import action_of

if TYPE_CHECKING:
    from vmmove.events import MigrationEvent
    from vmmove.model import MigrationRecord

__all__ = ["MIGRATION_SPAN", "PHASE_SPAN", "Tracker", "tracker", "use"]

MIGRATION_SPAN = "vmmove.migration"
PHASE_SPAN = "vmmove.phase"  # the phase's name follows: "vmmove.phase transferring"
STEP_EVENT = "vmmove.policy_step"
WARNING_EVENT = "vmmove.warning"


def _tracer_of(provider: TracerProvider | None) -> Tracer:
    from vmmove import __version__  # noqa: PLC0415

    return trace.get_tracer("vmmove", __version__, tracer_provider=provider)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass
class _Trace:
    tracer: Tracer  # a migration's spans all come from the provider it began with
    root: Span
    phase: Phase | None = None
    phase_span: Span | None = None
    steps: int = 0
    warnings: int = 0


class Tracker:
    """Spans of the migrations running in this process, kept from event to event."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._tracer = _tracer_of(provider)
        self._traces: dict[str, _Trace] = {}
        self._lock = threading.Lock()

    def retarget(self, provider: TracerProvider | None) -> None:
        """Trace migrations that begin from now on to ``provider`` (``None``: the global)."""
        with self._lock:
            self._tracer = _tracer_of(provider)

    def observe(self, event: MigrationEvent) -> None:
        record = event.record
        if record is None:
            return
        with self._lock:
            tr = self._traces.get(record.id)
            if tr is None:
                tr = self._traces[record.id] = self._begin(record, event.at)
            if not tr.root.is_recording():
                # No SDK behind the API (or it samples this one out): nothing to record,
                # and a migration costs no more than without the extra.
                if record.phase.terminal:
                    del self._traces[record.id]
                return
            self._events(tr, record)
            if record.phase is not tr.phase:
                self._enter(tr, record, event.at)
            if record.phase.terminal:
                self._end(tr, record, event.at)
                del self._traces[record.id]

    def _begin(self, record: MigrationRecord, at: float) -> _Trace:
        # The caller's context: the first event is emitted on the thread that called migrate().
        tracer = self._tracer
        root = tracer.start_span(
            MIGRATION_SPAN,
            context=otel_context.get_current(),
            start_time=_ns(min(record.created_at or at, at)),
            attributes={
                "vmmove.migration.id": record.id,
                "vmmove.backend": record.backend,
                "vmmove.vm.id": record.vm,
                "vmmove.vm.name": record.vm_name,
                "vmmove.source": record.source_name or record.source,
                "vmmove.mode.requested": record.mode.value,
                "vmmove.policy": record.policy,
            },
        )
        return _Trace(tracer=tracer, root=root)

    def _events(self, tr: _Trace, record: MigrationRecord) -> None:
        """Steps and warnings saved since the last event, on the span of the phase they
        happened in (pre-check warnings carry no event of their own: found here)."""
        where = tr.phase_span or tr.root
        for step in record.steps[tr.steps :]:
            where.add_event(
                STEP_EVENT,
                {
                    "vmmove.step": step.step,
                    "vmmove.step.action": action_of(step.step),
                    "vmmove.step.applied": step.applied,
                    "vmmove.step.reason": step.reason,
                },
                timestamp=_ns(step.at),
            )
        tr.steps = len(record.steps)
        for warning in record.warnings[tr.warnings :]:
            where.add_event(WARNING_EVENT, {"vmmove.warning": warning})
        tr.warnings = len(record.warnings)

    def _enter(self, tr: _Trace, record: MigrationRecord, at: float) -> None:
        if tr.phase_span is not None:
            tr.phase_span.end(end_time=_ns(at))
            tr.phase_span = None
        tr.phase = record.phase
        if record.phase.terminal:
            return
        if record.target is not None:
            tr.root.set_attribute("vmmove.target", record.target_name or record.target)
        parent = trace.set_span_in_context(tr.root)
        tr.phase_span = tr.tracer.start_span(
            f"{PHASE_SPAN} {record.phase.value}",
            context=parent,
            start_time=_ns(at),
            attributes={"vmmove.phase": record.phase.value, "vmmove.mode": record.mode.value},
        )

    def _end(self, tr: _Trace, record: MigrationRecord, at: float) -> None:
        from vmmove.outcomes import error_of  # noqa: PLC0415

        root = tr.root
        fig = record.figures
        root.set_attributes(
            {
                "vmmove.outcome": record.phase.value,
                "vmmove.mode": record.mode.value,
                "vmmove.vm_host": record.vm_host_name or record.vm_host or "",
                **({} if fig.total_time is None else {"vmmove.total_time_s": fig.total_time}),
                **({} if fig.downtime_ms is None else {"vmmove.downtime_ms": fig.downtime_ms}),
                **({} if fig.data_sent is None else {"vmmove.data_sent_bytes": fig.data_sent}),
                **({} if fig.iterations is None else {"vmmove.iterations": fig.iterations}),
                **_forecast(record),
            }
        )
        error = error_of(record)
        if error is not None:
            root.set_attribute("vmmove.error_type", type(error).__name__)
            root.record_exception(error, timestamp=_ns(at))
            if record.phase is Phase.FAILED:
                root.set_status(Status(StatusCode.ERROR, type(error).__name__))
        root.end(end_time=_ns(at))


def _forecast(record: MigrationRecord) -> dict[str, float | bool]:
    """The forecast beside the figures, so a trace shows predicted against measured."""
    p = record.predicted
    if p is None:
        return {}
    found = {
        "vmmove.predicted.converges": p.total_time is not None,
        "vmmove.predicted.total_time_s": p.total_time,
        "vmmove.predicted.downtime_ms": p.downtime_ms,
        "vmmove.predicted.data_sent_bytes": p.data_sent,
    }
    return {k: v for k, v in found.items() if v is not None}


_lock = threading.Lock()
_tracker: Tracker | None = None


def tracker() -> Tracker:
    """The process-wide tracker the plugin feeds."""
    global _tracker  # noqa: PLW0603 (one tracker per process, behind a lock)
    with _lock:
        if _tracker is None:
            _tracker = Tracker()
        return _tracker


def use(provider: TracerProvider | None) -> None:
    """Trace the migrations that begin from now on to ``provider`` instead of the global
    one (``None``: back to the global provider); those running keep theirs."""
    tracker().retarget(provider)
