"""Reads the migration jobs in the backend's own thread, so ``poll`` answers at once.

A PowerShell call takes a second or more on a real host (a new powershell.exe each time),
and one supervisor loop polls every migration of a connection. The sampler asks each source
host once per interval about all the jobs vmmove follows there (one script per host), and
``poll`` reads the latest answer. A job that disappeared is reported as gone, with where
the VM is registered then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vmmove.errors import VMMoveError

__all__ = ["Sample", "Sampler", "Watched"]


@dataclass(frozen=True, slots=True)
class Watched:
    job_id: str
    source: str  # host id whose WMI holds the job
    vm: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one job: its WMI object, or ``gone`` with where the VM is."""

    raw: Mapping[str, Any] | None = None
    gone: bool = False
    vm_host: str | None = None
    error: str | None = None  # the host could not be asked this time


#: fetch(source host id, job ids) -> {job id: raw object} for the jobs the host still has
Fetch = Callable[[str, list[str]], dict[str, Mapping[str, Any]]]
#: locate(vm id) -> host id or None
Locate = Callable[[str], str | None]


class Sampler:
    def __init__(self, fetch: Fetch, locate: Locate, interval: float) -> None:
        self._fetch = fetch
        self._locate = locate
        self._interval = interval
        self._watched: dict[str, Watched] = {}
        self._latest: dict[str, Sample] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, job: Watched) -> None:
        with self._lock:
            if job.job_id in self._watched:
                return
            self._watched[job.job_id] = job
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._loop, name="vmmove-hyperv-sampler", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._watched.pop(job_id, None)
            self._latest.pop(job_id, None)

    def latest(self, job_id: str) -> Sample | None:
        with self._lock:
            return self._latest.get(job_id)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.sample_once()
            self._wake.wait(self._interval)

    def sample_once(self) -> None:
        """Ask each source host about its watched jobs (also called directly by tests)."""
        with self._lock:
            by_host: dict[str, list[Watched]] = {}
            for job in self._watched.values():
                by_host.setdefault(job.source, []).append(job)
        for host, jobs in by_host.items():
            readings: dict[str, Sample] = {}
            try:
                found = self._fetch(host, [j.job_id for j in jobs])
                for job in jobs:
                    raw = found.get(job.job_id)
                    if raw is not None:
                        readings[job.job_id] = Sample(raw=raw)
                    else:
                        readings[job.job_id] = Sample(gone=True, vm_host=self._locate(job.vm))
            except VMMoveError as exc:
                readings = {j.job_id: Sample(error=str(exc)) for j in jobs}
            with self._lock:
                for job_id, sample in readings.items():
                    if job_id in self._watched:
                        self._latest[job_id] = sample
