"""LISTEN/NOTIFY for the PostgreSQL journal: one thread per journal on its own connection.

It keeps the set of cancel requests (read once at each (re)connect, then kept from the
notifications: nobody polls the table) and hands every notification to its subscribers
(a worker wakes on new queue items; ``vmmove watch`` prints them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from vmmove.journals.postgres import PgJournal

log = logging.getLogger("vmmove.journal")

Subscriber = Callable[[dict[str, Any]], None]


class Listener:
    def __init__(self, journal: PgJournal) -> None:
        self.journal = journal
        self.cancels: frozenset[str] = frozenset()
        self.subscribers: list[Subscriber] = []
        self.connected = threading.Event()  # set while listening (tests wait on it)
        self._stop = threading.Event()
        self._db: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._loop, name="vmmove-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # The first answer must hold the cancels asked before we listened.
        self.connected.wait(10.0)

    def stop(self) -> None:
        self._stop.set()
        db = self._db
        if db is not None:
            with contextlib.suppress(psycopg.Error):
                db.close()  # wakes notifies() at once
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(10.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                db = self.journal.connect_raw()
            except psycopg.Error as exc:
                log.debug("listener: journal unreachable (%s)", type(exc).__name__)
                self._stop.wait(0.5)  # a back-off between reconnects
                continue
            self._db = db
            try:
                db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.journal.channel)))
                # Listening first, then reading: no request falls between the two.
                rows = db.execute("SELECT record FROM vmmove_cancels").fetchall()
                self.cancels = frozenset(r[0] for r in rows)
                self.connected.set()
                self._deliver({"k": "connected"})
                # The timeout only lets stop() be seen; notifications wake it at once.
                while not self._stop.is_set():
                    for note in db.notifies(timeout=1.0):
                        self._handle(note.payload)
            except psycopg.Error as exc:
                log.debug("listener: connection lost (%s)", type(exc).__name__)
            finally:
                self.connected.clear()
                self._db = None
                with contextlib.suppress(psycopg.Error):
                    db.close()
            if not self._stop.is_set():
                self._stop.wait(0.2)  # a back-off before reconnecting

    def _handle(self, payload: str) -> None:
        try:
            message: dict[str, Any] = json.loads(payload)
        except ValueError:
            return
        kind = message.get("k")
        if kind == "cancel":
            self.cancels = self.cancels | {str(message.get("id"))}
        elif kind == "rec" and message.get("phase") in ("completed", "failed", "cancelled"):
            self.cancels = self.cancels - {str(message.get("id"))}
        self._deliver(message)

    def _deliver(self, message: dict[str, Any]) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber(message)
            except Exception:
                log.exception("a journal subscriber raised")
