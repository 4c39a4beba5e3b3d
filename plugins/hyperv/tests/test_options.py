"""The options hyperv:// declares: the docs table is written from them, and what is not
declared, or not of its kind, is refused before anything connects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.options import markdown_table, parse
from vmmove.plugins import load_plugins
from vmmove.testing.docs import marked_block
from vmmove_hyperv.backend import parse_uri
from vmmove_hyperv.options import OPTIONS

CANARY = "canary-hv-5d1e"
DOC = Path(__file__).resolve().parents[3] / "docs" / "backends" / "hyperv.md"


def test_the_docs_table_is_the_declaration() -> None:
    assert marked_block(DOC, "options-table") == markdown_table(OPTIONS)


def test_the_backend_is_registered_with_its_declaration() -> None:
    spec = load_plugins().backends.get("hyperv")
    assert spec.options == OPTIONS
    assert [o.name for o in OPTIONS if o.secret] == ["password"]


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        ("hyperv://hv1,hv2", {"clock": object()}, "unknown hyperv:// option"),
        (f"hyperv://hv1?password={CANARY}", {}, "cannot be given in the URI"),
        (f"hyperv://admin:{CANARY}@hv1,hv2", {}, "never goes in the URI"),
        ("hyperv://hv1,hv2", {"transport": "telnet"}, "one of ntlm"),
        ("hyperv://hv1,hv2?call_timeout=soon", {}, "a duration"),
        ("hyperv://", {}, "comma-separated list of hosts"),
        ("hyperv://hv1,,hv2", {}, "comma-separated list of hosts"),
        ("hyperv://hv1,hv1", {}, "named twice"),
        # basic over plain HTTP sends the password in the clear: refused unless insecure
        ("hyperv://admin@hv1", {"transport": "basic"}, "insecure=true"),
        ("hyperv://admin@hv1", {"smb_bandwidth": "64MiB"}, "performance=smb"),
    ],
)
def test_refused_before_connecting(uri: str, options: dict[str, Any], message: str) -> None:
    # No host behind these names: refused before any call is tried.
    options.setdefault("password", vmmove.Secret(CANARY))
    with pytest.raises(vmmove.InvalidInput, match=message) as info:
        vmmove.connect(uri, **options)
    assert CANARY not in str(info.value)


def test_uri_parts() -> None:
    assert parse_uri("hyperv://CORP%5Cops@hv1.corp:5986,10.0.0.7/prod") == (
        "CORP\\ops",
        ["hv1.corp:5986", "10.0.0.7"],
        "prod",
    )


def test_values_arrive_converted() -> None:
    parsed = parse(
        OPTIONS, uri="hyperv://hv1?call_timeout=2m&insecure=yes", kwargs={"password": "x"}
    )
    assert parsed["call_timeout"] == 120.0
    assert parsed["insecure"] is True
    assert parsed["transport"] == "ntlm"
    assert isinstance(parsed["password"], vmmove.Secret)
