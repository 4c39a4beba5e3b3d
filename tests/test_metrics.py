"""Prometheus metrics: a real HTTP endpoint scraped while simulated migrations run, parsed
with prometheus_client's own parser; and ``vmmove metrics serve`` reading the journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmmove
from vmmove import Phase

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from vmmove.observe import metrics_plugin
from vmmove.observe.labels import action_of
from vmmove.observe.metrics import FAMILIES, MetricsServer, serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[Samples, set[str], str]:
    """Every sample by (name, labels), the family names, and the raw text."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture
def endpoint() -> Iterator[MetricsServer]:
    assert metrics_plugin.feed() is not None  # the families exist before the first scrape
    server = serve(port=0)
    yield server
    server.close()


def test_scrape_during_and_after_simulated_migrations(endpoint: MetricsServer) -> None:
    before, families, _ = scrape(endpoint.url)
    for f in FAMILIES:  # every family, as the docs list it, at zero or more
        assert f.name.removesuffix("_total") in families, f.name
    with vmmove.connect("sim://") as conn:
        moves = [conn.migrate("db-1", to="host-b"), conn.migrate("app-1", to="edge-2")]
        refused = conn.migrate("gpu-1", to="host-a")  # pre-checks refuse: not live-migratable
        during: Samples = {}
        in_phase: Counter[str] = Counter()
        for event in conn.events():
            if event.vm == moves[0].record.vm and event.phase is Phase.TRANSFERRING:
                # The virtual clock stands still while we read: the scrape sees this moment.
                during, _, _ = scrape(endpoint.url)
                in_phase = Counter(m.record.phase.value for m in (*moves, refused) if not m.done)
                break
        assert in_phase[Phase.TRANSFERRING.value] >= 1
        for phase in Phase:
            if phase.terminal:
                continue
            gained = value(during, "vmmove_migrations_in_flight", backend="sim", phase=phase.value)
            was = value(before, "vmmove_migrations_in_flight", backend="sim", phase=phase.value)
            assert gained - was == in_phase[phase.value], phase
        records = conn.wait_all()
    after, _, text = scrape(endpoint.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("vmmove_migrations_started_total", backend="sim") == len(records)
    by_end = Counter((r.mode.value, r.phase.value, r.error_type or "") for r in records)
    for (mode, outcome, error_type), count in by_end.items():
        assert (
            delta(
                "vmmove_migrations_finished_total",
                backend="sim",
                mode=mode,
                outcome=outcome,
                error_type=error_type,
            )
            == count
        )
    assert by_end[("auto", "failed", "PrecheckFailed")] == 1  # the refusal, by its error type
    done = [r for r in records if r.phase is Phase.COMPLETED]
    assert len(done) == 2
    assert delta("vmmove_migration_duration_seconds_count", outcome="completed") == 2
    assert delta("vmmove_migration_duration_seconds_sum", outcome="completed") == pytest.approx(
        sum(r.figures.total_time or 0 for r in done)
    )
    assert delta("vmmove_migration_downtime_seconds_sum") == pytest.approx(
        sum(r.figures.downtime_ms or 0 for r in done) / 1000
    )
    assert delta("vmmove_migration_data_sent_bytes_sum") == pytest.approx(
        sum(r.figures.data_sent or 0 for r in done)
    )
    assert delta("vmmove_migration_precopy_iterations_sum") == sum(
        r.figures.iterations or 0 for r in done
    )
    # Predicted vs measured: each completed live move against its own forecast.
    forecasts = [(r, r.predicted) for r in done if r.predicted is not None]
    assert len(forecasts) == 2  # the simulator's inventory has a dirty rate for both
    assert delta(
        "vmmove_migration_predictions_total", predicted="converges", outcome="completed"
    ) == sum(f.total_time is not None for _, f in forecasts)
    for quantity, measured, predicted in (
        ("duration", "total_time", "total_time"),
        ("downtime", "downtime_ms", "downtime_ms"),
        ("data_sent", "data_sent", "data_sent"),
    ):
        ratios = [getattr(r.figures, measured) / getattr(f, predicted) for r, f in forecasts]
        name = "vmmove_migration_prediction_ratio"
        assert delta(f"{name}_count", quantity=quantity) == len(ratios), quantity
        assert delta(f"{name}_sum", quantity=quantity) == pytest.approx(sum(ratios)), quantity
    steps = Counter(
        (action_of(s.step), "applied" if s.applied else "skipped") for r in records for s in r.steps
    )
    assert steps  # db-1 fires policy steps under the default policy
    for (action, result), count in steps.items():
        assert delta("vmmove_policy_steps_total", action=action, result=result) == count
    for phase in Phase:
        if not phase.terminal:
            assert total(after, "vmmove_migrations_in_flight", phase=phase.value) == total(
                before, "vmmove_migrations_in_flight", phase=phase.value
            )
    # Time in each phase left: one observation per phase per migration that left it.
    left = Counter(
        t.phase.value for r in records for t, _ in zip(r.history, r.history[1:], strict=False)
    )
    for phase_name, count in left.items():
        assert delta("vmmove_phase_duration_seconds_count", phase=phase_name) == count
    # Low cardinality: no VM or host appears anywhere in the exposition.
    for r in records:
        for name in (r.vm, r.vm_name, r.source, r.target or "", r.id):
            assert name
            assert name not in text


@pytest.fixture
def journal_exporter(journal_path: Path) -> Iterator[str]:
    """``vmmove metrics serve --port 0`` in its own process, on the test's journal."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmmove.cli", "metrics", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "VMMOVE_JOURNAL": str(journal_path)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until it listens: it prints once bound
    try:
        assert line.startswith("serving http://"), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        yield line.split()[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_metrics_serve_shows_the_journal_of_other_processes(journal_exporter: str) -> None:
    empty, _, _ = scrape(journal_exporter)
    assert total(empty, "vmmove_migrations_started_total") == 0
    with vmmove.connect("sim://") as conn:  # this process writes the journal; the exporter reads
        conn.migrate("web-1", to="host-b").wait()
        with pytest.raises(vmmove.PrecheckFailed):
            conn.migrate("gpu-1", to="host-a").wait()
        running = conn.migrate("db-1", to="host-c")
        for event in running.events():
            if event.phase is Phase.TRANSFERRING:
                break
        during, _, _ = scrape(journal_exporter)
        assert (
            value(during, "vmmove_migrations_in_flight", backend="sim", phase="transferring") == 1
        )
        assert total(during, "vmmove_migrations_started_total") == 3
        assert total(during, "vmmove_migrations_finished_total", outcome="completed") == 1
        assert total(during, "vmmove_migrations_finished_total", error_type="PrecheckFailed") == 1
        record = running.wait()
    after, _, text = scrape(journal_exporter)
    assert total(after, "vmmove_migrations_in_flight") == 0
    assert total(after, "vmmove_migrations_finished_total", outcome="completed") == 2
    assert value(after, "vmmove_migration_data_sent_bytes_sum", backend="sim", mode="live") > (
        record.figures.data_sent or 0
    )
    # Two migrations left transferring (the refused one never got there).
    assert total(after, "vmmove_phase_duration_seconds_count", phase="transferring") == 2
    assert "_created" not in text  # rebuilt per scrape: no creation time that looks like a reset
    assert "db-1" not in text


def test_the_docs_list_every_family_with_its_labels() -> None:
    page = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    rows = {
        cells[1].strip("` "): cells[3].strip()
        for line in page.splitlines()
        if line.startswith("| `vmmove_") and len(cells := line.split("|")) > 4
    }
    assert set(rows) == {f.name for f in FAMILIES}
    for f in FAMILIES:
        assert rows[f.name] == ", ".join(f.labels), f.name
