"""A worker frozen between saving its start request and making the platform call, for
longer than the fence's margin, makes no platform call when it wakes (its record may have
been adopted meanwhile): the lease is checked again right before the call."""

from __future__ import annotations

import contextlib
import time
from typing import Any, cast

import pytest

import vmmove
from vmmove.backend import Backend
from vmmove.journals import postgres
from vmmove.journals.postgres import PgJournal
from vmmove.model import MigrationRecord
from vmmove.worker.fenced import CALL_MARGIN, FencedBackend

LEASE = 6.0


class Spy:
    """The backend, counting the start requests that reached it."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.starts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start(self, *args: Any, **kwargs: Any) -> Any:
        self.starts += 1
        return self.inner.start(*args, **kwargs)


def _run(pg_dsn: str, monkeypatch: pytest.MonkeyPatch, freeze: float) -> tuple[Spy, str]:
    """Migrate one VM as a worker would; ``freeze`` seconds pass (on the monotonic clock the
    lease is judged by) right after the start request is saved."""
    store = PgJournal(pg_dsn, owner="w-a", lease=LEASE).for_estate("sim://")
    offset = {"s": 0.0}
    real = time.monotonic
    monkeypatch.setattr(postgres.time, "monotonic", lambda: real() + offset["s"])
    saved = store.save

    def save(record: MigrationRecord) -> None:
        saved(record)
        if record.job_ref.get("intent") == "start":
            offset["s"] += freeze  # the process froze here

    monkeypatch.setattr(store, "save", save)
    conn = vmmove.connect("sim://", store=store)
    spy = Spy(conn.backend)
    conn.backend = cast("Backend", FencedBackend(cast("Backend", spy), store))
    m = conn.migrate("web-1", to="host-b")
    with contextlib.suppress(vmmove.WaitTimeout):  # a dropped run: nothing drives it here
        conn.wait_all(timeout=600)
    conn.detach()
    return spy, m.id


def test_a_worker_frozen_past_the_margin_makes_no_platform_call(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The record was begun (a whole lease) a moment before the start intent was saved; the
    # call needs a sixth of the lease still ahead: a freeze of more than five sixths trips
    # the check, before anyone may adopt the record (a whole lease).
    spy, record_id = _run(pg_dsn, monkeypatch, freeze=LEASE * (1 - CALL_MARGIN) + 0.1)
    assert spy.starts == 0
    record = PgJournal(pg_dsn).get(record_id)
    assert record.job_ref.get("intent") == "start"  # asked for nothing: the adopter finds no job
    assert not record.phase.terminal  # left for the lease to expire and another to adopt


def test_a_worker_that_did_not_freeze_calls_the_platform(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, record_id = _run(pg_dsn, monkeypatch, freeze=0.0)
    assert spy.starts == 1
    assert PgJournal(pg_dsn).get(record_id).phase.value == "completed"
