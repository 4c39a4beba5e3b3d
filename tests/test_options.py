"""One option dialect for every backend: declared as data, parsed once."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmmove import InvalidInput, Secret
from vmmove.options import Option, markdown_table, parse

DECLARED = (
    Option(name="insecure", kind="bool", default=False, doc="skip TLS verification"),
    Option(name="timeout", kind="duration", default=30.0, doc="per call"),
    Option(name="cache", kind="size", doc="cache size"),
    Option(name="tls_dir", kind="path", doc="client certificates"),
    Option(name="password", kind="secret", doc="the password", in_uri=False),
    Option(
        name="transport", kind="choice", choices=("ntlm", "kerberos"), default="ntlm", doc="auth"
    ),
    Option(name="retries", kind="int", default=3, doc="how often"),
    Option(name="paths", kind="list", doc="shared folders"),
    Option(name="hosts", kind="list", separator=" ", doc="host URIs"),
    Option(name="addresses", kind="map", doc="per host"),
)


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ({"insecure": "yes"}, {"insecure": True}),
        ({"insecure": "0"}, {"insecure": False}),
        ({"insecure": True}, {"insecure": True}),
        ({"timeout": "500ms"}, {"timeout": 0.5}),
        ({"timeout": "5m"}, {"timeout": 300.0}),
        ({"timeout": 7}, {"timeout": 7.0}),
        ({"cache": "64MiB"}, {"cache": 64 << 20}),
        ({"cache": 1024}, {"cache": 1024}),
        ({"tls_dir": "~/pki"}, {"tls_dir": Path("~/pki").expanduser()}),
        ({"transport": "kerberos"}, {"transport": "kerberos"}),
        ({"paths": "/a, /b,,"}, {"paths": ("/a", "/b")}),
        ({"paths": ["/a", " /b "]}, {"paths": ("/a", "/b")}),
        ({"hosts": "qemu://a,b/system  qemu://c/system"},
         {"hosts": ("qemu://a,b/system", "qemu://c/system")}),
        ({"addresses": "kvm1=10.0.0.1, qemu://h/?x=1=10.0.0.2"},
         {"addresses": {"kvm1": "10.0.0.1", "qemu://h/?x=1": "10.0.0.2"}}),
        ({"addresses": {"kvm1": "10.0.0.1"}}, {"addresses": {"kvm1": "10.0.0.1"}}),
    ],
)  # fmt: skip
def test_one_dialect_from_keywords_and_the_uri(
    given_: dict[str, Any], expected: dict[str, Any]
) -> None:
    from_kwargs = parse(DECLARED, kwargs=given_)
    assert {k: from_kwargs[k] for k in expected} == expected
    texts = {k: v for k, v in given_.items() if isinstance(v, str)}
    if texts:
        query = "&".join(f"{k}={v}" for k, v in texts.items())
        from_uri = parse(DECLARED, uri=f"x://host/?{query}")
        assert {k: from_uri[k] for k in texts} == {k: expected[k] for k in texts}


def test_defaults_and_precedence() -> None:
    got = parse(DECLARED, uri="x://h/?retries=5", kwargs={"retries": 9}, config={"retries": 1})
    assert got["retries"] == 9
    assert parse(DECLARED, uri="x://h/?retries=5", config={"retries": 1})["retries"] == 5
    assert parse(DECLARED, config={"retries": 1})["retries"] == 1
    assert parse(DECLARED)["retries"] == 3
    assert "cache" not in parse(DECLARED)


@pytest.mark.parametrize(
    ("kwargs", "uri", "match"),
    [
        ({"clock": object()}, "", "unknown x:// option.*clock.*known: addresses, cache"),
        ({"insecure": "maybe"}, "", "insecure .* wants true or false"),
        ({"insecure": 2}, "", "insecure"),
        ({"retries": True}, "", "retries .* wants a whole number"),
        ({"timeout": "-1s"}, "", "timeout"),
        ({"timeout": float("inf")}, "", "timeout"),
        ({"cache": "1 parsec"}, "", "cache .* wants a size"),
        ({"transport": "basic"}, "", "one of ntlm, kerberos"),
        ({"paths": ["/a", 3]}, "", "paths .* wants a list of text .* commas"),
        ({"hosts": 7}, "", "hosts .* separated by spaces"),
        ({"addresses": "kvm1"}, "", "addresses .* key=value"),
        ({"addresses": {"kvm1": 1}}, "", "addresses .* mapping"),
        ({}, "x://h/?inventory=a.toml", "unknown x:// option.*inventory.*URI query"),
        ({}, "x://h/?password=hunter2", "cannot be given in the URI"),
    ],
)
def test_bad_options_are_invalid_input(kwargs: dict[str, Any], uri: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        parse(DECLARED, kwargs=kwargs, uri=uri, scheme="x")


def test_a_secret_arrives_as_a_secret_and_is_never_echoed() -> None:
    got = parse(DECLARED, kwargs={"password": "hunter2"})
    assert isinstance(got["password"], Secret)
    assert got["password"].reveal() == "hunter2"
    with pytest.raises(InvalidInput) as info:
        parse(DECLARED, kwargs={"password": 12345})
    assert "12345" not in str(info.value)
    assert "hunter2" not in markdown_table(DECLARED)


def test_the_docs_table_lists_every_option() -> None:
    table = markdown_table(DECLARED)
    for opt in DECLARED:
        assert f"| `{opt.name}` |" in table


_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.lists(st.text(max_size=4)), st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
)  # fmt: skip


@given(st.dictionaries(st.sampled_from([o.name for o in DECLARED] + ["bogus"]), _ANY_VALUE))
def test_parse_answers_or_refuses_with_invalid_input(kwargs: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidInput):  # anything else escaping is the failure
        parse(DECLARED, kwargs=kwargs)


def test_the_cli_hands_the_secret_to_the_option_the_backend_declares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vmmove import cli
    from vmmove.plugins import BackendSpec, load_plugins

    def spec(options: tuple[Option, ...] | None) -> BackendSpec:
        return BackendSpec(
            scheme="x", factory=lambda u, o: None, description="", capabilities=None,  # type: ignore[arg-type, return-value]
            plugin="test", options=options,
        )  # fmt: skip

    backends = load_plugins().backends
    token = (Option(name="token", kind="secret", doc="bearer token", in_uri=False),)
    for declared, expected in [
        (None, "password"),  # parses its own options: the name it always had
        (token, "token"),
        (DECLARED, "password"),
        ((Option(name="insecure", kind="bool", doc="x"),), None),  # takes no secret at all
    ]:
        monkeypatch.setattr(backends, "get", lambda scheme, d=declared: spec(d))
        assert cli._secret_option("x://host") == expected


def test_a_secret_option_can_never_be_taken_from_a_uri() -> None:
    with pytest.raises(InvalidInput, match="never taken from a URI"):
        Option(name="password", kind="secret", doc="x")
