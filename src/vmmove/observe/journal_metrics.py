"""The metric families read from the journal, for ``vmmove metrics serve``.

The journal is what every process sharing it wrote (CLI runs, fleet runs, workers), so an
exporter reading it sees all of them, from any process, at every scrape. The same
:class:`~vmmove.observe.metrics.Recorder` as the live feed fills a fresh registry from the
records each time, so the families and their labels are the same in both.

Imports prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from vmmove.observe.metrics import Recorder, replay
from vmmove.store import RecordStore

__all__ = ["JournalCollector", "journal_registry"]


class JournalCollector(Collector):
    """Collects the families from every record of ``store`` at each scrape."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # described by collect(): nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        scratch = CollectorRegistry()
        replay(Recorder(scratch), self.store.list())
        for metric in scratch.collect():
            # A registry built per scrape would say every counter was created just now,
            # which reads as a reset: the journal's counters have no creation time.
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def journal_registry(store: RecordStore) -> CollectorRegistry:
    """A registry that exposes the journal's migrations (pass it to ``serve``)."""
    registry = CollectorRegistry()
    registry.register(JournalCollector(store))
    return registry
