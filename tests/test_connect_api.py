"""connect() and attach() as a new user calls them: every malformed argument is
InvalidInput, raised before a backend, a journal file or a record is touched."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.clock import VirtualClock
from vmmove.journal import Journal
from vmmove.plugins import BackendSpec, load_plugins
from vmmove.sim import SimBackend
from vmmove.sim import inventory as inv


def _files(journal_path: Path) -> dict[str, bytes]:
    """The journal and its -wal/-shm, byte for byte (absent: not in the dict)."""
    return {
        p.name: p.read_bytes()
        for p in journal_path.parent.glob(journal_path.name + "*")
        if p.is_file()
    }


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> list[Mapping[str, Any]]:
    """A ``probe://`` backend that records the options it is given."""
    calls: list[Mapping[str, Any]] = []

    def factory(uri: str, options: Mapping[str, Any]) -> vmmove.Backend:
        calls.append(dict(options))
        unknown = set(options) - {"colour"}
        if unknown:
            raise vmmove.InvalidInput(f"unknown probe:// option(s): {', '.join(sorted(unknown))}")
        return SimBackend()

    spec = BackendSpec(
        scheme="probe", factory=factory, description="test", capabilities=None, plugin="t"
    )
    monkeypatch.setitem(load_plugins().backends._specs, "probe", spec)
    return calls


@pytest.fixture
def journal_with_a_record(journal_path: Path) -> str:
    """A journal that already holds one finished migration; returns its id."""
    with vmmove.connect("sim://") as conn:
        record = conn.migrate("web-1", to="host-b").wait()
    conn.store.close()  # type: ignore[attr-defined]
    return record.id


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("unknown option", ("sim://",), {"bogus_option": 1}, "bogus_option"),
    ("max_concurrent as str", ("sim://",), {"max_concurrent": "2"}, "max_concurrent"),
    ("max_concurrent as bool", ("sim://",), {"max_concurrent": True}, "max_concurrent"),
    ("max_concurrent as float", ("sim://",), {"max_concurrent": 2.0}, "max_concurrent"),
    ("max_concurrent zero", ("sim://",), {"max_concurrent": 0}, "at least 1"),
    ("max_concurrent negative", ("sim://",), {"max_concurrent": -3}, "at least 1"),
    ("store not a store", ("sim://",), {"store": "journal.sqlite3"}, "RecordStore"),
    ("store an object", ("sim://",), {"store": object()}, "RecordStore"),
    ("empty uri", ("",), {}, "empty"),
    ("blank uri", ("   ",), {}, "empty"),
    ("uri not a string", (b"sim://",), {}, "string"),
    ("uri zero", (0,), {}, "string"),
    ("sim option typo", ("sim://",), {"inventry": inv.sample()}, "inventry"),
    ("sim clock typo", ("sim://",), {"clck": VirtualClock()}, "clck"),
    ("sim clock wrong type", ("sim://",), {"clock": "fast"}, "clock"),
    ("sim inventory wrong type", ("sim://",), {"inventory": 42}, "inventory"),
    ("sim clock and speed", ("sim://?speed=10",), {"clock": VirtualClock()}, "not both"),
    ("sim query typo", ("sim://?sped=10",), {}, "sped"),
    ("core keyword misspelt", ("sim://",), {"max_concurent": 2}, "did you mean"),
    ("link zero", ("sim://",), {"link_mib_s": 0}, "link_mib_s"),
    ("link negative", ("sim://",), {"link_mib_s": -32}, "link_mib_s"),
    ("link as text", ("sim://",), {"link_mib_s": "32"}, "link_mib_s"),
    ("link as bool", ("sim://",), {"link_mib_s": True}, "link_mib_s"),
    ("link infinite", ("sim://",), {"link_mib_s": float("inf")}, "link_mib_s"),
]


@pytest.mark.parametrize(
    ("args", "kwargs", "says"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_a_malformed_connect_is_invalid_input_and_creates_no_journal(
    journal_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(vmmove.InvalidInput, match=says):
        vmmove.connect(*args, **kwargs)
    assert _files(journal_path) == {}


@pytest.mark.parametrize(
    ("args", "kwargs", "says"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_a_malformed_connect_leaves_an_existing_journal_untouched(
    journal_path: Path,
    journal_with_a_record: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    says: str,
) -> None:
    before = _files(journal_path)
    assert before  # the fixture's journal is on disk
    with pytest.raises(vmmove.InvalidInput, match=says):
        vmmove.connect(*args, **kwargs)
    assert _files(journal_path) == before
    assert [r.id for r in Journal(journal_path).list()] == [journal_with_a_record]


def test_core_keywords_are_checked_before_the_backend_is_built(
    probe: list[Mapping[str, Any]],
) -> None:
    with pytest.raises(vmmove.InvalidInput, match="max_concurrent"):
        vmmove.connect("probe://x", max_concurrent="2", colour="red")  # type: ignore[arg-type]
    with pytest.raises(vmmove.InvalidInput, match="empty"):
        vmmove.connect("", colour="red")
    assert probe == []  # no backend was asked to connect


def test_backend_options_reach_the_backend_and_core_keywords_do_not(
    probe: list[Mapping[str, Any]],
) -> None:
    store = vmmove.MemoryStore()
    with vmmove.connect("probe://x", store=store, max_concurrent=2, colour="red") as conn:
        assert conn.max_concurrent == 2
        assert conn.store is store
    assert probe == [{"colour": "red"}]


def test_an_unknown_option_is_the_backends_to_refuse(
    probe: list[Mapping[str, Any]], journal_path: Path
) -> None:
    with pytest.raises(vmmove.InvalidInput, match="unknown probe:// option"):
        vmmove.connect("probe://x", bogus_option=1)
    assert probe == [{"bogus_option": 1}]
    assert _files(journal_path) == {}


def test_none_means_vmmove_uri_then_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMMOVE_URI", "nobackend://somewhere")
    with pytest.raises(vmmove.BackendNotFound):
        vmmove.connect(None)
    with pytest.raises(vmmove.InvalidInput, match="empty"):
        vmmove.connect("")  # never falls back, not even to $VMMOVE_URI
    monkeypatch.delenv("VMMOVE_URI")
    with vmmove.connect(None, store=vmmove.MemoryStore()) as conn:
        assert conn.uri == "sim://"


def test_the_simulator_takes_its_own_options(tmp_path: Path) -> None:
    clock = VirtualClock()
    sample = inv.sample()
    with vmmove.connect("sim://", clock=clock, inventory=sample) as conn:
        assert conn.clock is clock
        assert conn.backend.inventory is sample  # type: ignore[attr-defined]
    path = tmp_path / "estate.toml"
    path.write_text(
        '[[host]]\nname = "a"\n[[host]]\nname = "b"\n[[vm]]\nname = "v"\nhost = "a"\n',
        encoding="utf-8",
    )
    with vmmove.connect("sim://", inventory=path) as conn:
        assert [v.id for v in conn.vms()] == ["v"]
    # The CLI hands $VMMOVE_PASSWORD to whichever backend serves the URI.
    with vmmove.connect("sim://", password=vmmove.Secret("unused")) as conn:
        assert conn.vms()


def test_connect_with_max_concurrent_in_range_works() -> None:
    with vmmove.connect("sim://", max_concurrent=1) as conn:
        assert conn.max_concurrent == 1


# ---- attach ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record_id", "kwargs", "says"),
    [
        ("", {}, "record id"),
        (None, {}, "record id"),
        ("abc", {"uri": ""}, "empty"),
        ("abc", {"store": "journal.sqlite3"}, "RecordStore"),
    ],
    ids=["empty id", "id None", "empty uri", "store not a store"],
)
def test_a_malformed_attach_is_invalid_input_and_creates_no_journal(
    journal_path: Path, record_id: Any, kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(vmmove.InvalidInput, match=says):
        vmmove.attach(record_id, **kwargs)
    assert _files(journal_path) == {}


def test_attach_without_a_journal_is_not_found_and_creates_none(journal_path: Path) -> None:
    with pytest.raises(vmmove.NotFound, match="no journal"):
        vmmove.attach("no-such-record")
    assert _files(journal_path) == {}


def test_attach_with_an_unknown_option_changes_no_record(
    journal_path: Path, journal_with_a_record: str
) -> None:
    before = Journal(journal_path).get(journal_with_a_record)
    with pytest.raises(vmmove.InvalidInput, match="bogus_option"):
        vmmove.attach(journal_with_a_record, bogus_option=1)
    assert Journal(journal_path).get(journal_with_a_record) == before
    assert [r.id for r in Journal(journal_path).list()] == [journal_with_a_record]


# ---- the installed plugin backends refuse what they do not know --------------------------
PLUGIN_URIS = {
    "qemu": "qemu+tcp://127.0.0.1/system",
    "vsphere": "vsphere://user@127.0.0.1/Datacenter",
    "kubevirt": "kubevirt://context/namespace",
}


@pytest.mark.parametrize("scheme", sorted(PLUGIN_URIS))
def test_installed_plugin_backends_refuse_an_unknown_option(
    scheme: str, journal_path: Path
) -> None:
    if scheme not in {s.scheme for s in load_plugins().backends.all()}:
        pytest.skip(f"no {scheme}:// backend installed")
    with pytest.raises(vmmove.InvalidInput, match="bogus_option"):
        vmmove.connect(PLUGIN_URIS[scheme], bogus_option=1)  # checked before any network
    assert _files(journal_path) == {}
