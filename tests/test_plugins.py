"""Plugins are found through entry points, exactly as a third-party one would be."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmmove
from vmmove.plugins import load_plugins
from vmmove.testing.contract import BackendContract, ContractSetup

TINY = Path(__file__).parent / "tinyplugin"


@pytest.fixture
def tiny_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A folder on sys.path holding a module and its *.dist-info is an installed distribution
    # to importlib.metadata: the same discovery path pip-installed plugins take.
    monkeypatch.syspath_prepend(str(TINY))
    load_plugins(reload=True)
    yield
    monkeypatch.undo()
    load_plugins(reload=True)


def test_builtin_simulator_registers_through_the_hook() -> None:
    spec = load_plugins().backends.get("sim")
    assert spec.plugin == "sim"
    assert spec.capabilities is not None
    assert spec.capabilities.postcopy


def test_unknown_scheme_names_the_installed_ones() -> None:
    with pytest.raises(vmmove.BackendNotFound, match=r"installed: .*sim"):
        vmmove.connect("nope://x")


@pytest.mark.parametrize("uri", ["no-scheme", "://x", "sim://?speed=fast", "sim://?colour=red"])
def test_malformed_uri_is_invalid_input(uri: str) -> None:
    with pytest.raises(vmmove.InvalidInput):
        vmmove.connect(uri)


def test_third_party_plugin_is_discovered(tiny_installed: None) -> None:
    assert "tiny" in [s.scheme for s in load_plugins().backends.all()]
    assert load_plugins().backends.get("tiny").plugin == "tiny"


def test_autoload_switch_leaves_only_builtins(
    tiny_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMMOVE_DISABLE_PLUGIN_AUTOLOAD", "1")
    specs = load_plugins(reload=True).backends.all()
    # the built-in simulator alone: in process (sim://) and as a shared server (sim+http://)
    assert [(s.scheme, s.plugin) for s in specs] == [("sim", "sim"), ("sim+http", "sim")]


def test_blocked_plugin_is_not_loaded(
    tiny_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMMOVE_BLOCK_PLUGINS", "tiny")
    schemes = [s.scheme for s in load_plugins(reload=True).backends.all()]
    assert "tiny" not in schemes
    assert "sim" in schemes


def test_broken_plugin_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vmmove_broken.py").write_text("raise RuntimeError('boom at import')\n")
    dist = tmp_path / "vmmove_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vmmove-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vmmove]\nbroken = vmmove_broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        plugins = load_plugins(reload=True)
        assert "boom at import" in plugins.broken["broken"]
        assert plugins.backends.get("sim")
    finally:
        monkeypatch.undo()
        load_plugins(reload=True)


class TestTinyPluginContract(BackendContract):
    @pytest.fixture
    def contract_setup(self, tiny_installed: None) -> Iterator[ContractSetup]:
        with vmmove.connect("tiny://") as conn:
            backend = conn.backend

            def refuse(vm: str, host: str) -> None:
                backend.refuse.add((vm, host))  # type: ignore[attr-defined]

            yield ContractSetup(
                connection=conn,
                running_vm="alpha",
                target="t2",
                stopped_vm="beta",
                refuse_reservation=refuse,
                reconnect=lambda store: vmmove.Connection(
                    conn.backend, uri="tiny://", plugins=conn.plugins, store=store
                ),
            )


def test_plugin_with_a_misspelled_hook_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vmmove_typo.py").write_text(
        "import vmmove\n\n@vmmove.hookimpl\ndef vmmove_add_backend(registry):\n    pass\n"
    )
    dist = tmp_path / "vmmove_typo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vmmove-typo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vmmove]\ntypo = vmmove_typo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        plugins = load_plugins(reload=True)
        assert "vmmove_add_backend" in plugins.broken["typo"]
        with vmmove.connect("sim://") as conn:
            assert conn.hosts()
    finally:
        monkeypatch.undo()
        load_plugins(reload=True)


def test_missing_project_backend_names_its_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMMOVE_BLOCK_PLUGINS", "libvirt")  # as if it were not installed
    load_plugins(reload=True)
    try:
        with pytest.raises(vmmove.BackendNotFound, match="pip install vmmove-libvirt"):
            vmmove.connect("qemu+tcp://127.0.0.1:16600/system")
    finally:
        monkeypatch.undo()
        load_plugins(reload=True)
