"""Where migration records live. The engine saves every transition before acting on it."""

from __future__ import annotations

import threading
from typing import Protocol

from vmmove.errors import Conflict, NotFound
from vmmove.model import MigrationRecord

__all__ = ["MemoryStore", "RecordStore"]


class RecordStore(Protocol):
    def begin(self, record: MigrationRecord) -> None:
        """Save a new record and lock its VM, or raise :class:`Conflict` and save nothing."""

    def save(self, record: MigrationRecord) -> None:
        """Persist the record (replacing the previous version with the same id); a terminal
        record releases its VM's lock."""

    def get(self, record_id: str) -> MigrationRecord: ...

    def list(self) -> list[MigrationRecord]: ...

    def adopt(self, record: MigrationRecord) -> None:
        """Take over the VM's lock for a record another client began (``attach``); raise
        :class:`Conflict` if a live client still holds it."""

    def cancel_requests(self) -> set[str]:
        """Ids of in-flight records whose cancel another process asked for."""


class MemoryStore:
    """Records for the life of the process."""

    def __init__(self) -> None:
        self._records: dict[str, MigrationRecord] = {}
        self._locks: dict[str, str] = {}  # VM id -> record id
        self._lock = threading.Lock()

    def begin(self, record: MigrationRecord) -> None:
        with self._lock:
            holder = self._locks.get(record.vm)
            if holder is not None and not self._records[holder].phase.terminal:
                raise Conflict(f"VM {record.vm_name} is being migrated by record {holder}")
            self._locks[record.vm] = record.id
            self._records[record.id] = record

    def save(self, record: MigrationRecord) -> None:
        with self._lock:
            self._records[record.id] = record
            if record.phase.terminal and self._locks.get(record.vm) == record.id:
                del self._locks[record.vm]

    def get(self, record_id: str) -> MigrationRecord:
        with self._lock:
            try:
                return self._records[record_id]
            except KeyError:
                raise NotFound(f"no migration record {record_id!r}") from None

    def list(self) -> list[MigrationRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created_at)

    def adopt(self, record: MigrationRecord) -> None:
        with self._lock:
            self._locks[record.vm] = record.id
            self._records[record.id] = record

    def cancel_requests(self) -> set[str]:
        return set()  # one process: a cancel goes through Migration.cancel()
