"""Fixtures for the Nutanix backend's tests: a fresh fake Prism per test (a werkzeug server
on 127.0.0.1:0 with TLS from the fake's own CA), and connections to it.

Modules in :data:`_ACROSS_APIS` run once per API generation in :data:`API_MATRIX` (Prism
Central v4.0, and Prism Element v2.0 alone); ``@pytest.mark.apis(...)`` narrows a test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.engine import Connection
from vmmove_nutanix.testing import DEFAULT_PASSWORD, FakePrism, TaskTiming

API_MATRIX = ("v4.0", "v2.0")
_ACROSS_APIS = {"test_contract", "test_live"}
#: quick tasks: a migration runs for 0.15 s of real time
FAST = TaskTiming(queued=0.02, migrate=0.15, power=0.03, shutdown=0.05, place=0.03)
POLL = 0.02


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "apis(*names): run on these Prism API generations")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in _ACROSS_APIS and "api" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("apis")
        names = only.args if only is not None else API_MATRIX
        metafunc.parametrize("api", names, indirect=True)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> str:
    """The API generation the fake answers (v4.0 unless parametrized)."""
    return str(getattr(request, "param", "v4.0"))


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    """The fake's server thread and the backend's watcher are stopped when a test ends."""
    yield
    ours = ("vmmove-fake-prism", "vmmove-nutanix-watch")
    left = [t.name for t in threading.enumerate() if t.name in ours]
    assert left == [], f"threads still running: {left}"


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test writes its records to its own journal, and no CA bundle of the machine's
    environment changes what a test trusts."""
    monkeypatch.setenv("VMMOVE_JOURNAL", str(tmp_path / "journal.sqlite3"))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture
def make_prism(api: str) -> Iterator[Callable[..., FakePrism]]:
    """Start fake Prisms (the sample estate unless ``estate=False``); all stopped after."""
    started: list[FakePrism] = []

    def make(*, estate: bool = True, **kwargs: Any) -> FakePrism:
        kwargs.setdefault("api", api)
        kwargs.setdefault("timing", TaskTiming(**vars(FAST)))
        prism = FakePrism(**kwargs).start()
        started.append(prism)
        if estate:
            prism.state.sample()
        return prism

    yield make
    for prism in started:
        prism.stop()


@pytest.fixture
def prism(make_prism: Callable[..., FakePrism]) -> FakePrism:
    return make_prism()


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[..., Connection]]:
    """Open connections to a fake Prism (its CA, its password, quick polls); closed after."""
    opened: list[Connection] = []

    def open_(prism: FakePrism, **options: Any) -> Connection:
        options.setdefault("ca_file", str(prism.ca_file(tmp_path)))
        options.setdefault("password", vmmove.Secret(DEFAULT_PASSWORD))
        options.setdefault("poll_interval", POLL)
        options.setdefault("store", vmmove.MemoryStore())
        conn = vmmove.connect(options.pop("uri", prism.uri), **options)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.close()
