"""The Prometheus metrics of migrations: one family per concept, low-cardinality labels.

Labels name kinds of things, never things: ``backend`` (the URI scheme), ``mode``,
``phase``, ``outcome`` (completed, failed, cancelled), ``error_type`` (the error class,
empty when completed), ``action`` (a policy step's action) and ``result`` (applied,
skipped). VM and host names would make a series per VM: they belong in traces.

Two feeds fill the same families: :class:`LiveFeed` from the ``vmmove_migration_event``
hook as migrations run in this process, and :func:`replay` from records (the journal
exporter, :mod:`vmmove.observe.journal_metrics`). Both go through :class:`Recorder`, so a
family means the same thing whichever feed filled it.

Imports prometheus_client: only the plugin, a worker or ``vmmove metrics serve`` loads it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server

from vmmove.machine import Phase
from vmmove.model import MigrationMode
from vmmove.observe.labels import action_of

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from vmmove.events import MigrationEvent
    from vmmove.model import MigrationRecord, StepRecord

__all__ = ["FAMILIES", "LiveFeed", "MetricsServer", "Recorder", "replay", "serve"]

_MINUTE, _HOUR = 60.0, 3600.0
_DURATION_BUCKETS = (1, 5, 10, 30, _MINUTE, 2 * _MINUTE, 5 * _MINUTE, 10 * _MINUTE,
                     30 * _MINUTE, _HOUR, 2 * _HOUR)  # fmt: skip
# Live pauses are milliseconds; a cold move's pause is the whole stop-move-start.
_DOWNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, _MINUTE, 5 * _MINUTE)
_BYTES_BUCKETS = tuple(float(1 << n) for n in range(28, 42, 2))  # 256 MiB .. 1 TiB
_ITERATION_BUCKETS = (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50)
_PHASE_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, _MINUTE, 5 * _MINUTE, 15 * _MINUTE, _HOUR)
# Around 1: the targets are within 10 % (time) and 25 % (downtime).
_RATIO_BUCKETS = (0.5, 0.75, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.5, 2, 4)


@dataclass(frozen=True)
class Family:
    """One metric family as the exposition shows it (for docs, tests and dashboards)."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


#: Every family, in the order the docs list them.
FAMILIES = (
    Family("vmmove_migrations_started_total", "counter", ("backend",),
           "Migrations accepted (each one later counts once in finished)."),
    Family("vmmove_migrations_finished_total", "counter",
           ("backend", "mode", "outcome", "error_type"),
           "Migrations that reached a terminal phase, by how they ended."),
    Family("vmmove_migrations_in_flight", "gauge", ("backend", "phase"),
           "Migrations now in each non-terminal phase."),
    Family("vmmove_migration_duration_seconds", "histogram", ("backend", "mode", "outcome"),
           "Total time of a migration, from its job's start to its end."),
    Family("vmmove_migration_downtime_seconds", "histogram", ("backend", "mode"),
           "The pause the VM saw, where the platform reports it."),
    Family("vmmove_migration_data_sent_bytes", "histogram", ("backend", "mode"),
           "Bytes a migration sent, where the platform reports it."),
    Family("vmmove_migration_precopy_iterations", "histogram", ("backend",),
           "Pre-copy passes of a live migration, where the platform reports them."),
    Family("vmmove_phase_duration_seconds", "histogram", ("backend", "phase"),
           "Time spent in each phase a migration left."),
    Family("vmmove_policy_steps_total", "counter", ("backend", "action", "result"),
           "Policy steps that fired, applied or skipped, by action."),
    Family("vmmove_migration_warnings_total", "counter", ("backend",),
           "Warnings written into migration records."),
    Family("vmmove_migration_prediction_ratio", "histogram", ("backend", "quantity"),
           "Measured over predicted (1 is exact) of a completed live migration's duration, "
           "downtime and data sent, against the forecast made when its target was chosen."),
    Family("vmmove_migration_predictions_total", "counter", ("backend", "predicted", "outcome"),
           "Live migrations with a forecast, by what it said (converges or not) and how "
           "they ended: the model's convergence calls against the record."),
)  # fmt: skip

_BUCKETS = {
    "vmmove_migration_duration_seconds": _DURATION_BUCKETS,
    "vmmove_migration_downtime_seconds": _DOWNTIME_BUCKETS,
    "vmmove_migration_data_sent_bytes": _BYTES_BUCKETS,
    "vmmove_migration_precopy_iterations": _ITERATION_BUCKETS,
    "vmmove_phase_duration_seconds": _PHASE_BUCKETS,
    "vmmove_migration_prediction_ratio": _RATIO_BUCKETS,
}


class Recorder:
    """The families on one registry, and the only code that writes them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        made: dict[str, Counter | Gauge | Histogram] = {}
        for f in FAMILIES:
            if f.kind == "counter":
                # prometheus_client adds the _total suffix itself.
                made[f.name] = Counter(
                    f.name.removesuffix("_total"), f.help, f.labels, registry=registry
                )
            elif f.kind == "gauge":
                made[f.name] = Gauge(f.name, f.help, f.labels, registry=registry)
            else:
                made[f.name] = Histogram(
                    f.name, f.help, f.labels, buckets=_BUCKETS[f.name], registry=registry
                )
        self._m = made

    def _counter(self, name: str) -> Counter:
        metric = self._m[name]
        assert isinstance(metric, Counter)
        return metric

    def _histogram(self, name: str) -> Histogram:
        metric = self._m[name]
        assert isinstance(metric, Histogram)
        return metric

    def started(self, record: MigrationRecord) -> None:
        self._counter("vmmove_migrations_started_total").labels(record.backend).inc()

    def in_flight(self, backend: str, phase: Phase, delta: int) -> None:
        gauge = self._m["vmmove_migrations_in_flight"]
        assert isinstance(gauge, Gauge)
        gauge.labels(backend, phase.value).inc(delta)

    def left_phase(self, backend: str, phase: Phase, seconds: float) -> None:
        self._histogram("vmmove_phase_duration_seconds").labels(backend, phase.value).observe(
            max(seconds, 0.0)
        )

    def step(self, backend: str, step: StepRecord) -> None:
        result = "applied" if step.applied else "skipped"
        self._counter("vmmove_policy_steps_total").labels(
            backend, action_of(step.step), result
        ).inc()

    def warnings(self, backend: str, count: int) -> None:
        if count > 0:
            self._counter("vmmove_migration_warnings_total").labels(backend).inc(count)

    def finished(self, record: MigrationRecord) -> None:
        backend, mode, outcome = record.backend, record.mode.value, record.phase.value
        error_type = "" if record.phase is Phase.COMPLETED else record.error_type or ""
        self._counter("vmmove_migrations_finished_total").labels(
            backend, mode, outcome, error_type
        ).inc()
        fig = record.figures
        self._prediction(record)
        if fig.total_time is not None:
            self._histogram("vmmove_migration_duration_seconds").labels(
                backend, mode, outcome
            ).observe(fig.total_time)
        if record.phase is not Phase.COMPLETED:
            return  # a failed move's pause and bytes describe no finished move
        if fig.downtime_ms is not None:
            self._histogram("vmmove_migration_downtime_seconds").labels(backend, mode).observe(
                fig.downtime_ms / 1000
            )
        if fig.data_sent is not None:
            self._histogram("vmmove_migration_data_sent_bytes").labels(backend, mode).observe(
                fig.data_sent
            )
        if fig.iterations is not None:
            self._histogram("vmmove_migration_precopy_iterations").labels(backend).observe(
                fig.iterations
            )

    def _prediction(self, record: MigrationRecord) -> None:
        forecast = record.predicted
        if forecast is None:
            return
        called = "converges" if forecast.total_time is not None else "does_not_converge"
        self._counter("vmmove_migration_predictions_total").labels(
            record.backend, called, record.phase.value
        ).inc()
        # Only a live move that completed live measured what was forecast (a cold fallback
        # measures the stop-move-start, a failure nothing comparable).
        if record.phase is not Phase.COMPLETED or record.mode is not MigrationMode.LIVE:
            return
        fig, ratio = record.figures, self._histogram("vmmove_migration_prediction_ratio")
        for quantity, measured, predicted in (
            ("duration", fig.total_time, forecast.total_time),
            ("downtime", fig.downtime_ms, forecast.downtime_ms),
            ("data_sent", fig.data_sent, forecast.data_sent),
        ):
            if measured is not None and predicted:
                ratio.labels(record.backend, quantity).observe(measured / predicted)


@dataclass
class _Seen:
    phase: Phase | None
    since: float
    steps: int = 0
    warnings: int = 0


class LiveFeed:
    """Turns the events of migrations running in this process into metric updates.

    Reads the record each event carries, so steps and warnings saved without an event of
    their own (pre-check warnings, steps the platform decides) are counted at the next one.
    Hooks come from every connection's supervisor thread: one lock.
    """

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def observe(self, event: MigrationEvent) -> None:
        record = event.record
        if record is None:
            return
        rec = self.recorder
        with self._lock:
            seen = self._seen.get(record.id)
            if seen is None:
                # An attached migration was started by another process: not counted again.
                if record.phase is Phase.PENDING:
                    rec.started(record)
                seen = self._seen[record.id] = _Seen(phase=None, since=event.at)
            if record.phase is not seen.phase:
                if seen.phase is not None:
                    rec.in_flight(record.backend, seen.phase, -1)
                    rec.left_phase(record.backend, seen.phase, event.at - seen.since)
                if not record.phase.terminal:
                    rec.in_flight(record.backend, record.phase, +1)
                seen.phase, seen.since = record.phase, event.at
            for step in record.steps[seen.steps :]:
                rec.step(record.backend, step)
            seen.steps = len(record.steps)
            rec.warnings(record.backend, len(record.warnings) - seen.warnings)
            seen.warnings = len(record.warnings)
            if record.phase.terminal:
                rec.finished(record)
                del self._seen[record.id]


def replay(recorder: Recorder, records: Iterable[MigrationRecord]) -> None:
    """Feed whole records (the journal's) through the same recorder as the live feed."""
    for record in records:
        recorder.started(record)
        for here, after in itertools.pairwise(record.history):
            if here.phase is not after.phase:
                recorder.left_phase(record.backend, here.phase, after.at - here.at)
        for step in record.steps:
            recorder.step(record.backend, step)
        recorder.warnings(record.backend, len(record.warnings))
        if record.phase.terminal:
            recorder.finished(record)
        else:
            recorder.in_flight(record.backend, record.phase, +1)


class MetricsServer:
    """The HTTP endpoint :func:`serve` started: ``url`` to scrape, ``close()`` to stop."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = host.decode() if isinstance(host, bytes) else str(host)
        self.port = int(port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(
    port: int = 9478, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Expose ``registry`` (default: the process-wide one the plugin feeds) over HTTP from a
    daemon thread; ``port=0`` picks a free port (read it from the result). A worker or any
    long-lived process calls this once at start."""
    server, thread = _start_http_server(port, addr=addr, registry=registry or REGISTRY)
    return MetricsServer(server, thread)
