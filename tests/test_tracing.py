"""OpenTelemetry traces: the span tree of a live, a cancelled, a fallen-back and a refused
migration, read from the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

import vmmove
from vmmove import Phase, Policy, Step
from vmmove.policy import AtIteration, ColdFallback

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from vmmove.observe import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)
    provider.shutdown()


def tree(exporter: InMemorySpanExporter, record_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The migration's span and its children, in the order they started."""
    finished = exporter.get_finished_spans()
    roots = [
        s
        for s in finished
        if s.name == tracing.MIGRATION_SPAN
        and s.attributes is not None
        and s.attributes["vmmove.migration.id"] == record_id
    ]
    assert len(roots) == 1
    root = roots[0]
    assert root.context is not None
    children = [s for s in finished if s.parent is not None and s.parent == root.context]
    return root, sorted(children, key=lambda s: s.start_time or 0)


def phases_walked(record: vmmove.MigrationRecord) -> list[str]:
    return [t.phase.value for t in record.history if not t.phase.terminal]


def names(children: Sequence[ReadableSpan]) -> list[str]:
    return [s.name.removeprefix(tracing.PHASE_SPAN + " ") for s in children]


def test_live_migration_is_a_child_of_the_callers_span(spans: InMemorySpanExporter) -> None:
    tracer = TracerProvider().get_tracer("caller")  # any provider: only its context matters
    with vmmove.connect("sim://") as conn:
        with tracer.start_as_current_span("maintenance window") as caller:
            m = conn.migrate("db-1", to="host-b")
        record = m.wait()  # driven outside the caller's span: the parent was taken at migrate()
    root, children = tree(spans, record.id)
    assert root.parent is not None
    assert root.parent.span_id == caller.get_span_context().span_id
    assert root.context is not None
    assert root.context.trace_id == caller.get_span_context().trace_id
    assert names(children) == phases_walked(record)
    # Each phase span covers its stretch of the record's history, on the connection's clock.
    stretches = [
        (t.at, after.at)
        for t, after in zip(record.history, record.history[1:], strict=False)
        if not t.phase.terminal
    ]
    for child, (start, end) in zip(children, stretches, strict=True):
        assert child.start_time == int(start * 1e9)
        assert child.end_time == int(end * 1e9)
    assert root.end_time == children[-1].end_time
    transferring = children[names(children).index("transferring")]
    steps = [e for e in transferring.events if e.name == tracing.STEP_EVENT]
    assert [e.attributes["vmmove.step"] for e in steps if e.attributes] == [
        s.step for s in record.steps
    ]
    assert record.steps  # db-1 under the default policy fires steps
    assert root.status.status_code is StatusCode.UNSET
    attrs = root.attributes or {}
    assert attrs["vmmove.outcome"] == "completed"
    assert attrs["vmmove.vm.name"] == "db-1"
    assert attrs["vmmove.vm_host"] == "host-b"
    assert attrs["vmmove.iterations"] == record.figures.iterations
    assert record.predicted is not None
    assert record.predicted.total_time is not None
    assert attrs["vmmove.predicted.converges"] is True
    assert attrs["vmmove.predicted.total_time_s"] == record.predicted.total_time
    assert not [e for e in root.events if e.name == "exception"]


def test_cancelled_migration_records_the_cancel(spans: InMemorySpanExporter) -> None:
    with vmmove.connect("sim://") as conn:
        m = conn.migrate("cache-1", to="host-a")
        for event in m.events():
            if event.phase is Phase.TRANSFERRING:
                assert m.cancel()
        with pytest.raises(vmmove.MigrationCancelled):
            m.wait()
        record = m.record
    root, children = tree(spans, record.id)
    assert names(children) == phases_walked(record)
    assert names(children)[-1] == "transferring"
    attrs = root.attributes or {}
    assert attrs["vmmove.outcome"] == "cancelled"
    assert attrs["vmmove.error_type"] == "MigrationCancelled"
    (exception,) = [e for e in root.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "vmmove.errors.MigrationCancelled"
    # A cancel asked for is not a failure of the operation.
    assert root.status.status_code is StatusCode.UNSET


def test_fallen_back_migration_shows_both_attempts(spans: InMemorySpanExporter) -> None:
    fallback = Policy(
        name="fall-back-at-2",
        steps=(Step(trigger=AtIteration(n=2), action=ColdFallback()),),
    )
    with vmmove.connect("sim://") as conn:
        record = conn.migrate("cache-1", to="host-a", policy=fallback).wait()
    assert record.mode is vmmove.MigrationMode.COLD
    root, children = tree(spans, record.id)
    walked = names(children)
    assert walked == phases_walked(record)
    first = walked.index("transferring")
    assert walked[first + 1] == "requesting"  # transferring -> requesting: the fallback
    modes = [(s.attributes or {}).get("vmmove.mode") for s in children]
    assert modes[first] == "live"
    assert modes[first + 1 :] == ["cold"] * (len(modes) - first - 1)
    steps = [e.attributes or {} for e in children[first].events if e.name == tracing.STEP_EVENT]
    assert [(s["vmmove.step.action"], s["vmmove.step.applied"]) for s in steps] == [
        ("cold-fallback", True)
    ]
    attrs = root.attributes or {}
    assert attrs["vmmove.mode"] == "cold"
    assert attrs["vmmove.outcome"] == "completed"


def test_refused_migration_is_an_error_and_keeps_secrets_out(
    spans: InMemorySpanExporter,
) -> None:
    canary = "s3cret-canary-pw"
    with vmmove.connect("sim://", password=vmmove.Secret(canary)) as conn:
        with pytest.raises(vmmove.PrecheckFailed):
            conn.migrate("gpu-1", to="host-a").wait()
        (m,) = conn.migrations()
        record = m.record
    root, children = tree(spans, record.id)
    assert names(children) == phases_walked(record)
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "PrecheckFailed"
    (exception,) = [e for e in root.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "vmmove.errors.PrecheckFailed"
    for span in spans.get_finished_spans():
        assert canary not in span.to_json()
