"""Fixtures for the Hyper-V backend's tests: a fresh emulated fabric per test, reached
in-process (:mod:`vmmove_hyperv.testing.direct`, no wire) or over the fake WinRM endpoint.

The migration suites run on both output shapes (Windows PowerShell 5.1: enums as numbers,
arrays in their ``{"value", "Count"}`` envelope; PowerShell 7: enums as names, one object
as a list): a test that takes the ``shape`` fixture runs once per shape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.engine import Connection
from vmmove.options import parse
from vmmove.plugins import load_plugins
from vmmove.store import RecordStore
from vmmove_hyperv.backend import HyperVBackend
from vmmove_hyperv.options import OPTIONS
from vmmove_hyperv.testing.direct import direct_factory
from vmmove_hyperv.testing.emulation import HyperVShell
from vmmove_hyperv.testing.fabric import Fabric, Timing

PASSWORD = "s3cret-fabric-pw"
URI = "hyperv://admin@hv1,hv2,hv3"
_OURS = ("vmmove-hyperv",)


def fast_timing() -> Timing:
    return Timing(starting=0.1, cancel=0.1, cold=0.2, shutdown=0.2, boot=0.2)


def quick_fabric() -> Fabric:
    """The sample estate, with migrations short enough for a quick suite (db-1 slow enough
    to cancel in)."""
    fabric = Fabric(timing=fast_timing()).sample()
    fabric.vm("web-1").migrate_seconds = 0.5
    fabric.vm("db-1").migrate_seconds = 2.0
    return fabric


@pytest.fixture(params=["5.1", "7"], ids=lambda s: f"ps{s}")
def shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    fabric = quick_fabric()
    yield fabric
    fabric.release_all()


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMMOVE_JOURNAL", str(tmp_path / "journal.sqlite3"))


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    """The samplers a test's connections started are stopped when they close."""
    before = set(threading.enumerate())
    yield
    ours = [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("vmmove-hyperv-sampler")
    ]
    for thread in ours:
        thread.join(5.0)
    assert [t.name for t in ours if t.is_alive()] == []


def direct_backend(shell: HyperVShell, uri: str = URI, **options: Any) -> HyperVBackend:
    options.setdefault("password", vmmove.Secret(PASSWORD))
    options.setdefault("poll_interval", 0.1)
    parsed = parse(OPTIONS, uri=uri, kwargs=options, scheme="hyperv")
    return HyperVBackend(uri, parsed, protocol_factory=direct_factory(shell))


ConnectFn = Callable[..., Connection]


@pytest.fixture
def connect() -> Iterator[ConnectFn]:
    """``connect(shell, store=None, **options)``: an in-process connection, closed after."""
    opened: list[Connection] = []

    def _connect(
        shell: HyperVShell, store: RecordStore | None = None, **options: Any
    ) -> Connection:
        conn = Connection(
            direct_backend(shell, **options), uri=URI, plugins=load_plugins(), store=store
        )
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()
