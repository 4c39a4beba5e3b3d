"""libvirt job statistics (``virDomainGetJobStats`` and the JOB_COMPLETED event, same keys) to
vmmove's units: bytes, bytes/s, passes, milliseconds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmmove.errors import ConnectionFailed
from vmmove.model import Figures, MiB

__all__ = [
    "DIRTYRATE_MEASURED",
    "DIRTYRATE_MEASURING",
    "JOB_ACTIVE",
    "Sample",
    "delta_ratio",
    "dirty_rate",
    "figures",
    "nonzero_memory",
    "sample",
]

# virDomainJobType
JOB_NONE, JOB_BOUNDED, JOB_UNBOUNDED, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED = range(6)
JOB_ACTIVE = frozenset({JOB_BOUNDED, JOB_UNBOUNDED})
PAGE = 4096  # when memory_page_size is missing (libvirt reports it with every rate)
# virDomainDirtyRateStatus
DIRTYRATE_MEASURING, DIRTYRATE_MEASURED = 1, 2
# virDomainJobOperation
JOB_OPERATION_MIGRATION_IN, JOB_OPERATION_MIGRATION_OUT = 4, 5


def completed_flags(lv: Any) -> int:
    """``jobStats`` flags for the last completed job, kept for the next reader: without
    ``KEEP_COMPLETED`` (libvirt >= 4.5) a read removes them, and a later lookup of the VM
    would no longer know what its migration found."""
    return int(lv.VIR_DOMAIN_JOB_STATS_COMPLETED) | int(
        getattr(lv, "VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED", 0)
    )


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One reading of a running migration job."""

    data_total: int | None = None
    data_processed: int | None = None
    data_remaining: int | None = None
    memory_remaining: int | None = None  # bytes of whole pages: data_* count disks too
    pages_sent: int | None = None  # memory_normal + memory_constant: whole pages, zero or not
    page_size: int = PAGE
    elapsed_ms: int | None = None  # time_elapsed: since the job began
    transfer_rate: float | None = None  # memory_bps
    dirty_rate: float | None = None  # memory_dirty_rate pages/s x memory_page_size
    iteration: int | None = None  # memory_iteration: QEMU's dirty-sync count, 1 in the first pass
    expected_downtime_ms: int | None = None  # "downtime" while the job runs is QEMU's estimate
    postcopy_requests: int | None = None
    throttle: int | None = None  # auto_converge_throttle: percent of vCPU time taken

    @property
    def started(self) -> bool:
        """QEMU is sending: libvirt reports sizes only once its migration is active."""
        return bool(self.data_total) or bool(self.iteration)


_LIMIT = 1 << 64  # libvirt's counters are unsigned long long


def _int(stats: Mapping[str, Any], key: str) -> int | None:
    """A counter, or ``None`` when it is absent or no counter at all: NaN, infinite,
    negative, beyond 64 bits, or not a number (int() would raise on NaN and infinity, and
    float() on the product of huge ones)."""
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    number = int(value)
    return number if 0 <= number < _LIMIT else None


def _mapping(stats: Any) -> Mapping[str, Any]:
    if not isinstance(stats, Mapping):
        raise ConnectionFailed(f"libvirt sent job statistics as {type(stats).__name__}")
    return stats


def dirty_rate(stats: Mapping[str, Any], *, since: float = 0.0) -> float | None:
    """A guest's dirty rate (bytes/s) from its ``VIR_DOMAIN_STATS_DIRTYRATE`` record: a
    finished calculation that started at ``since`` (epoch seconds) or later, else ``None``.
    libvirt gives the start in whole seconds: one second of slack."""
    if stats.get("dirtyrate.calc_status") != DIRTYRATE_MEASURED:
        return None
    if stats.get("dirtyrate.calc_start_time", 0) + 1 < since:
        return None
    return float(stats.get("dirtyrate.megabytes_per_second", 0)) * MiB


def sample(stats: Mapping[str, Any]) -> Sample:
    """A running job's statistics. QEMU computes the dirty rate at the end of each pass, so
    during the first pass ``memory_dirty_rate`` is 0 for "not measured yet": ``None`` here."""
    stats = _mapping(stats)
    iteration = _int(stats, "memory_iteration") or None
    pages = _int(stats, "memory_dirty_rate")
    page_size = _int(stats, "memory_page_size") or PAGE
    dirty = None
    if pages is not None and (pages > 0 or (iteration or 0) >= 2):
        dirty = float(pages * page_size)
    bps = _int(stats, "memory_bps")
    return Sample(
        data_total=_int(stats, "data_total"),
        data_processed=_int(stats, "data_processed"),
        data_remaining=_int(stats, "data_remaining"),
        memory_remaining=_int(stats, "memory_remaining"),
        pages_sent=_sum(_int(stats, "memory_normal"), _int(stats, "memory_constant")),
        page_size=page_size,
        elapsed_ms=_int(stats, "time_elapsed"),
        transfer_rate=float(bps) if bps else None,
        dirty_rate=dirty,
        iteration=iteration,
        expected_downtime_ms=_int(stats, "downtime"),
        postcopy_requests=_int(stats, "memory_postcopy_requests"),
        throttle=_int(stats, "auto_converge_throttle") or None,
    )


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def figures(
    final: Mapping[str, Any] | None,
    last: Sample | None,
    total_time: float,
    *,
    completed: bool,
) -> Figures:
    """What the migration cost. ``final`` is the completed job's statistics (the JOB_COMPLETED
    event, or ``jobStats(COMPLETED)``); after an abort libvirt keeps none, and the last sample
    taken while the job ran stands in (no downtime: the VM never paused)."""
    if final is not None:
        final = _mapping(final)
    if final and _int(final, "data_processed") is not None:
        downtime = _int(final, "downtime") if completed else None
        return Figures(
            total_time=total_time,
            downtime_ms=float(downtime) if downtime is not None else None,
            data_sent=_int(final, "data_processed"),
            iterations=_int(final, "memory_iteration"),
        )
    return Figures(
        total_time=total_time,
        downtime_ms=None,
        data_sent=last.data_processed if last else None,
        iterations=last.iteration if last else None,
    )


#: Fewer re-sent pages than this say too little of a guest's writes to forecast by.
DELTA_MIN_PAGES = 1024


def delta_ratio(stats: Mapping[str, Any]) -> float | None:
    """What a re-sent page cost the guest's last migration with XBZRLE, as a share of a whole
    page, from its completed statistics (libvirt carries the source's to the destination).
    QEMU (since 5.1) counts every page it found in the cache in ``compression_pages`` and
    what it sent for them in ``compression_bytes``: a delta's size, a whole page for one
    whose delta overflowed, nothing for one unchanged. ``None`` when that migration did not
    compress or re-sent too few pages to say."""
    if stats.get("operation") not in (JOB_OPERATION_MIGRATION_IN, JOB_OPERATION_MIGRATION_OUT):
        return None
    encoded, sent = _int(stats, "compression_pages"), _int(stats, "compression_bytes")
    if encoded is None or sent is None or encoded < DELTA_MIN_PAGES:
        return None
    page = _int(stats, "memory_page_size") or PAGE
    # At least a thousandth: a guest that rewrote its pages unchanged still costs headers.
    return min(max(sent / (encoded * page), 0.001), 1.0)


def nonzero_memory(stats: Mapping[str, Any]) -> int | None:
    """Bytes of guest memory that were not zero when the guest last migrated, from that
    migration's completed statistics (``jobStats(COMPLETED)`` on the host it moved to):
    QEMU sends a zero page as a header and counts it in ``memory_constant``, so the first
    pass costs the rest. ``None`` when the last job was no migration or libvirt kept no
    counts."""
    if stats.get("operation") not in (JOB_OPERATION_MIGRATION_IN, JOB_OPERATION_MIGRATION_OUT):
        return None
    total, zero = _int(stats, "memory_total"), _int(stats, "memory_constant")
    if not total or zero is None:
        return None
    return max(total - zero * (_int(stats, "memory_page_size") or PAGE), 0)
