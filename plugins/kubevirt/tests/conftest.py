"""Fixtures for the KubeVirt backend's tests: a fresh fake cluster per test (an in-process
API server on 127.0.0.1:0 with a fake KubeVirt), and connections to it.

The migration suites (``test_live``, ``test_cold``, ``test_contract``) run once per
KubeVirt release line in :data:`RELEASE_MATRIX`: one of each ``migrationState`` shape (1.5:
``completed`` with ``failed`` and no ``addedNodeSelector``; 1.7: ``completed`` false on
failure; 1.9: ``completed`` with ``failed`` again, the default). A test marked
``@pytest.mark.one_release`` runs on the default release only, one marked
``@pytest.mark.releases(...)`` on those named.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.engine import Connection
from vmmove_kubevirt.testing import DEFAULT_RELEASE, FakeKube, MigrationTiming

_OURS = ("vmmove-fake-kube", "vmmove-kubevirt")
#: The release lines the migration suites run against: one per migrationState shape.
RELEASE_MATRIX = ("1.5", "1.7", "1.9")
_ACROSS_RELEASES = {"test_live", "test_cold", "test_contract"}
#: The VM whose live migrations run long enough to cancel mid-transfer (the others are quick).
SLOW_VM = "db-1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "one_release: run on the default KubeVirt release only")
    config.addinivalue_line("markers", "releases(*names): run on these KubeVirt releases")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if (
        module in _ACROSS_RELEASES
        and "release" in metafunc.fixturenames
        and metafunc.definition.get_closest_marker("one_release") is None
    ):
        only = metafunc.definition.get_closest_marker("releases")
        names = only.args if only is not None else RELEASE_MATRIX
        metafunc.parametrize("release", names, indirect=True, ids=lambda r: f"kv{r}")


@pytest.fixture
def release(request: pytest.FixtureRequest) -> str:
    """The KubeVirt release line the fake imitates (the newest unless parametrized)."""
    return str(getattr(request, "param", DEFAULT_RELEASE))


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    """Every thread a test's fakes and connections started is stopped when it ends."""
    before = set(threading.enumerate())
    yield
    ours = [t for t in threading.enumerate() if t not in before and t.name.startswith(_OURS)]
    for thread in ours:
        thread.join(5.0)  # they were told to stop; a join bounds how long they may take
    left = [t.name for t in ours if t.is_alive()]
    assert left == [], f"threads still running: {left}"


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test writes its migration records to its own journal, never the user's."""
    monkeypatch.setenv("VMMOVE_JOURNAL", str(tmp_path / "journal.sqlite3"))


def fast_timing(**changes: Any) -> MigrationTiming:
    """Phases short enough for a quick suite; ``Running`` long enough to be seen, and for
    :data:`SLOW_VM` long enough to cancel in."""
    timing = MigrationTiming(
        pending=0.02,
        scheduling=0.05,
        scheduled=0.02,
        preparing_target=0.05,
        target_ready=0.02,
        running=0.4,
        switchover=0.05,
        abort=0.05,
        vm_start=0.05,
        vm_stop=0.05,
        running_by_vmi={SLOW_VM: 1.0},
    )
    if "running" in changes:
        changes.setdefault("running_by_vmi", {})  # one Running time for every VM
    for name, value in changes.items():
        setattr(timing, name, value)
    return timing


@pytest.fixture
def timing() -> Callable[..., MigrationTiming]:
    """``timing(running=30.0, ...)``: the fast timing with some phases changed."""
    return fast_timing


KubeFactory = Callable[..., FakeKube]


@pytest.fixture
def make_kube(release: str) -> Iterator[KubeFactory]:
    """``make_kube(sample=True, **FakeKube options)``: a started fake cluster (fast timing
    unless ``timing`` is given; the test's KubeVirt release unless ``release`` is given),
    stopped after the test."""
    started: list[FakeKube] = []

    def _make(sample: bool = True, **options: Any) -> FakeKube:
        options.setdefault("timing", fast_timing())
        options.setdefault("release", release)
        kube = FakeKube(**options).start()
        started.append(kube)
        if sample:
            kube.sample()
        return kube

    yield _make
    for kube in started:
        kube.stop()
    for kube in started:
        assert kube.controller.errors == [], kube.controller.errors


@pytest.fixture
def kube(make_kube: KubeFactory) -> FakeKube:
    """The sample estate (three nodes, five VMs) on a fake cluster."""
    return make_kube()


@pytest.fixture
def kubeconfig(kube: FakeKube, tmp_path: Path) -> Path:
    return kube.kubeconfig(tmp_path / "kubeconfig")


ConnectFn = Callable[..., Connection]


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[ConnectFn]:
    """``connect(kube, uri=..., **options)``: a connection to a fake cluster, closed after
    the test."""
    opened: list[Connection] = []

    def _connect(
        kube: FakeKube, uri: str = "kubevirt://fake/default", **options: Any
    ) -> Connection:
        path = kube.kubeconfig(tmp_path / "kubeconfig")
        options.setdefault("kubeconfig", str(path))
        options.setdefault("poll_interval", 0.1)
        conn = vmmove.connect(uri, **options)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()
