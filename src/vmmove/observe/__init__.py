"""Where operators already look: Prometheus metrics and OpenTelemetry traces of migrations.

Both are plugins of the ``vmmove_migration_event`` hook, registered through the ``vmmove``
entry-point group like any backend, and both stay asleep unless their extra is installed
(``vmmove[metrics]``: prometheus_client; ``vmmove[otel]``: opentelemetry-api). Nothing here
is imported by ``import vmmove`` or ``vmmove --help``.

- :mod:`~vmmove.observe.metrics`: the metric families and what feeds them;
- :mod:`~vmmove.observe.journal_metrics`: the same families read from the journal, for
  ``vmmove metrics serve`` (every process that shares the journal);
- :mod:`~vmmove.observe.metrics_plugin`, :mod:`~vmmove.observe.tracing_plugin`: the
  entry points, light enough to load in every process;
- :mod:`~vmmove.observe.tracing`: one span per migration, a child span per phase.
"""
