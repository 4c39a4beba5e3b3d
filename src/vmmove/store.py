"""Where migration records live. The engine saves every transition before acting on it."""

from __future__ import annotations

import threading
from typing import Protocol

from vmmove.errors import NotFound
from vmmove.model import MigrationRecord

__all__ = ["MemoryStore", "RecordStore"]


class RecordStore(Protocol):
    def save(self, record: MigrationRecord) -> None:
        """Persist the record (replacing the previous version with the same id)."""

    def get(self, record_id: str) -> MigrationRecord: ...

    def list(self) -> list[MigrationRecord]: ...


class MemoryStore:
    """Records for the life of the process."""

    def __init__(self) -> None:
        self._records: dict[str, MigrationRecord] = {}
        self._lock = threading.Lock()

    def save(self, record: MigrationRecord) -> None:
        with self._lock:
            self._records[record.id] = record

    def get(self, record_id: str) -> MigrationRecord:
        with self._lock:
            try:
                return self._records[record_id]
            except KeyError:
                raise NotFound(f"no migration record {record_id!r}") from None

    def list(self) -> list[MigrationRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created_at)
