"""The options nutanix:// declares: the docs table is written from them, and the core
refuses what is not declared (or not of its kind) before anything connects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.options import markdown_table, parse
from vmmove.plugins import load_plugins
from vmmove.testing.docs import marked_block
from vmmove_nutanix.options import OPTIONS

CANARY = "canary-ntnx-3c9d"
DOC = Path(__file__).resolve().parents[3] / "docs" / "backends" / "nutanix.md"


def test_the_docs_table_is_the_declaration() -> None:
    assert marked_block(DOC, "options-table") == markdown_table(OPTIONS)


def test_the_backend_is_registered_with_its_declaration() -> None:
    spec = load_plugins().backends.get("nutanix")
    assert spec.options == OPTIONS
    assert spec.capabilities is not None
    assert not spec.capabilities.cancel  # migrate tasks cannot be cancelled
    assert [o.name for o in OPTIONS if o.secret] == ["password"]  # what the CLI's secret feeds


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        ("nutanix://127.0.0.1:1", {"clock": object()}, "unknown nutanix:// option"),
        ("nutanix://127.0.0.1:1?token=x", {}, "unknown nutanix:// option"),
        (f"nutanix://127.0.0.1:1?password={CANARY}", {}, "cannot be given in the URI"),
        (f"nutanix://admin:{CANARY}@127.0.0.1:1", {}, "holds a password"),
        ("nutanix://127.0.0.1:1", {"insecure": "maybe"}, "true or false"),
        ("nutanix://127.0.0.1:1?timeout=soon", {}, "a duration"),
        ("nutanix://127.0.0.1:1", {"page_size": 500}, "1 to 100"),
        ("nutanix://127.0.0.1:notaport", {}, "malformed"),
        ("nutanix://127.0.0.1:1", {"ca_file": "/nonexistent/ca.pem"}, "not a file"),
    ],
)
def test_what_is_not_declared_or_not_of_its_kind_is_refused_before_connecting(
    uri: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(vmmove.InvalidInput, match=message) as info:
        vmmove.connect(uri, **options)
    assert CANARY not in str(info.value)  # a secret's value is never echoed


def test_values_arrive_converted_to_their_kinds() -> None:
    parsed = parse(
        OPTIONS,
        uri="nutanix://p?poll_interval=500ms&insecure=yes&page_size=20",
        kwargs={"password": "abc"},
    )
    assert parsed["poll_interval"] == 0.5
    assert parsed["insecure"] is True
    assert parsed["page_size"] == 20
    assert isinstance(parsed["password"], vmmove.Secret)
    assert parsed["user"] == "admin"  # the declared default
    assert "ca_file" not in parsed
