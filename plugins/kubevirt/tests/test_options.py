"""The options kubevirt:// declares: the docs table is written from them, and the core
refuses what is not declared (the simulator's own options too) before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest

import vmmove
from vmmove.options import markdown_table
from vmmove.plugins import load_plugins
from vmmove.testing.docs import marked_block
from vmmove_kubevirt.options import OPTIONS

CANARY = "canary-7f3a9e"
DOC = Path(__file__).resolve().parents[3] / "docs" / "backends" / "kubevirt.md"


def test_the_docs_table_is_the_declaration() -> None:
    assert marked_block(DOC, "options-table") == markdown_table(OPTIONS)


def test_the_backend_is_registered_with_its_declaration() -> None:
    spec = load_plugins().backends.get("kubevirt")
    assert spec.options == OPTIONS
    assert [o.name for o in OPTIONS if o.secret] == ["token"]  # what the CLI's password feeds


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        # the simulator's options were once accepted here without a word
        ("kubevirt://fake/default", {"clock": object()}, "unknown kubevirt:// option"),
        ("kubevirt://fake/default", {"inventory": "estate.json"}, "unknown kubevirt:// option"),
        ("kubevirt://fake/default?inventory=x", {}, "unknown kubevirt:// option"),
        ("kubevirt://fake/default", {"password": vmmove.Secret(CANARY)}, "known: .*token"),
        (f"kubevirt://fake/default?token={CANARY}", {}, "cannot be given in the URI"),
        ("kubevirt://fake/default", {"insecure": "maybe"}, "true or false"),
        ("kubevirt://fake/default?timeout=soon", {}, "a duration"),
    ],
)
def test_what_is_not_declared_or_not_of_its_kind_is_refused_before_connecting(
    uri: str, options: dict[str, object], message: str
) -> None:
    # No cluster behind these: the options are refused before any connection is tried.
    with pytest.raises(vmmove.InvalidInput, match=message) as info:
        vmmove.connect(uri, kubeconfig="/nonexistent/kubeconfig", **options)
    assert CANARY not in str(info.value)  # a secret's value is never echoed


def test_values_arrive_converted_to_their_kinds() -> None:
    from vmmove.options import parse

    parsed = parse(
        OPTIONS,
        uri="kubevirt://c/ns?poll_interval=500ms&insecure=yes&watch_seconds=5m",
        kwargs={"token": "abc"},
    )
    assert parsed["poll_interval"] == 0.5
    assert parsed["insecure"] is True
    assert parsed["watch_seconds"] == 300.0
    assert isinstance(parsed["token"], vmmove.Secret)
    assert parsed["migration_policy"] is True  # the declared default
    assert "in_cluster" not in parsed  # no default: automatic
