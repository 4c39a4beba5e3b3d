"""The backend's own worker: it reads the Prism tasks of running jobs, so that ``poll``
answers at once from the latest sample (one supervisor loop drives every migration of a
connection, and an HTTP round trip would hold all of them up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmmove.errors import ConnectionFailed, VMMoveError
from vmmove_nutanix.parse import NativeTask

__all__ = ["Sample", "TaskWatcher"]


@dataclass(frozen=True, slots=True)
class Sample:
    task: NativeTask | None
    vm_host: str | None  # read once the task has ended
    error: VMMoveError | None
    at: float  # monotonic time of the read


@dataclass
class _Watched:
    vm: str
    sample: Sample | None = None
    done: bool = False


class TaskWatcher:
    """Reads each watched task every ``interval`` seconds in one thread, and once a task
    has ended, where its VM is (``locate``)."""

    def __init__(
        self,
        read_task: Callable[[str], NativeTask],
        locate: Callable[[str], str | None],
        ended: Callable[[NativeTask], bool],
        interval: float,
    ) -> None:
        self._read_task = read_task
        self._locate = locate
        self._ended = ended
        self.interval = interval
        self._jobs: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, task_id: str, vm: str) -> None:
        with self._lock:
            self._jobs.setdefault(task_id, _Watched(vm))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="vmmove-nutanix-watch", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def latest(self, task_id: str) -> Sample | None:
        with self._lock:
            watched = self._jobs.get(task_id)
            return watched.sample if watched else None

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._jobs.pop(task_id, None)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                todo = [(k, w.vm) for k, w in self._jobs.items() if not w.done]
            for task_id, vm in todo:
                if self._stop.is_set():
                    return
                self._sample(task_id, vm)
            self._wake.wait(self.interval)
            self._wake.clear()

    def _sample(self, task_id: str, vm: str) -> None:
        task: NativeTask | None = None
        host = None
        error: VMMoveError | None = None
        done = False
        try:
            task = self._read_task(task_id)
            if self._ended(task):
                host = self._locate(vm)
                done = True
        except VMMoveError as exc:
            error = exc
        except Exception as exc:  # never let the worker die: the poll says what happened
            error = ConnectionFailed(f"reading task {task_id} failed: {type(exc).__name__}")
        with self._lock:
            watched = self._jobs.get(task_id)
            if watched is None:
                return
            if error is not None and watched.sample is not None and watched.sample.task:
                task = watched.sample.task  # kept for the record; the error is what counts
            watched.sample = Sample(task, host, error, time.monotonic())
            watched.done = done
