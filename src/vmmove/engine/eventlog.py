"""A bounded, append-only log of migration events; readers keep absolute positions."""

from __future__ import annotations

import itertools
from collections import deque

from vmmove.events import MigrationEvent

_MAX_EVENTS = 10_000  # per migration; older events drop off the front


class EventLog:
    """Append-only, bounded; readers keep absolute positions."""

    def __init__(self) -> None:
        self._items: deque[MigrationEvent] = deque(maxlen=_MAX_EVENTS)
        self._base = 0

    def append(self, event: MigrationEvent) -> None:
        if len(self._items) == _MAX_EVENTS:
            self._base += 1
        self._items.append(event)

    @property
    def end(self) -> int:
        return self._base + len(self._items)

    def read(self, pos: int) -> tuple[list[MigrationEvent], int]:
        start = max(pos, self._base)
        items = list(itertools.islice(self._items, start - self._base, None))
        return items, start + len(items)
