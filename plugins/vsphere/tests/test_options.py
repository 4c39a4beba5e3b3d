"""vsphere:// URIs, options, fault mapping and the plugin's registration: no simulator needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import vmmove
from vmmove.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    PrecheckFailed,
    ReservationRefused,
)
from vmmove.options import markdown_table
from vmmove.options import parse as parse_options
from vmmove.plugins import load_plugins
from vmmove.testing.docs import marked_block
from vmmove_vsphere import faults
from vmmove_vsphere.options import OPTIONS, Settings, settings

PW = vmmove.Secret("s3cret-Pa55")
DOCS = Path(__file__).resolve().parents[3] / "docs" / "backends" / "vsphere.md"


def parse(uri: str, options: dict[str, Any]) -> Settings:
    """What a connect makes of ``uri`` and ``options``, up to the network: the core parses the
    options as the plugin registered them, then the backend reads the URI."""
    spec = load_plugins().backends.get("vsphere")
    assert spec.options is not None
    parsed = parse_options(
        spec.options, uri=uri, kwargs=options, scheme=spec.scheme, passthrough=spec.passthrough
    )
    return settings(uri, parsed)


def test_uri_and_defaults() -> None:
    s = parse(
        "vsphere://administrator%40vsphere.local@VC.example:8443/Folder/DC0", {"password": PW}
    )
    assert (s.host, s.port, s.username, s.datacenter) == (
        "vc.example",
        8443,
        "administrator@vsphere.local",
        "Folder/DC0",
    )
    assert s.password.reveal() == "s3cret-Pa55"
    assert (s.ca_file, s.thumbprint, s.insecure, s.priority) == (
        None,
        None,
        False,
        "defaultPriority",
    )
    assert s.display() == "vsphere://administrator@vsphere.local@vc.example:8443/Folder/DC0"
    assert parse("vsphere://u@vc", {"password": "x"}).port == 443


def test_password_never_in_uri_repr_or_message() -> None:
    with pytest.raises(InvalidInput) as info:
        parse("vsphere://user:hunter22@vc/DC0", {})
    assert "hunter22" not in str(info.value)
    s = parse("vsphere://user@vc/DC0", {"password": PW})
    assert "s3cret" not in repr(s)
    assert "s3cret" not in s.display()


def test_password_from_option_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput, match="no password"):
        parse("vsphere://user@vc/DC0", {})
    monkeypatch.setenv("VMMOVE_PASSWORD", "from-env")
    assert parse("vsphere://user@vc/DC0", {}).password.reveal() == "from-env"
    assert parse("vsphere://user@vc/DC0", {"password": PW}).password == PW  # option wins


@pytest.mark.parametrize(
    ("uri", "options", "match"),
    [
        ("vsphere:///DC0", {}, "names the vCenter"),
        ("vsphere://vc/DC0", {}, "names the user"),
        ("vsphere://u@vc/DC0?colour=red", {}, r"unknown vsphere:// option.*\(URI query\)"),
        ("vsphere://u@vc/DC0", {"colour": "red"}, "unknown vsphere:// option"),
        ("vsphere://u@vc/DC0", {"clock": object()}, "unknown vsphere:// option.*clock"),
        ("vsphere://u@vc/DC0", {"inventory": "x.toml"}, "unknown vsphere:// option.*inventory"),
        ("vsphere://u@vc/DC0?password=x", {}, "cannot be given in the URI"),
        ("vsphere://u@vc/DC0?insecure=maybe", {}, "true or false"),
        ("vsphere://u@vc/DC0?timeout=-1", {}, "wants a duration"),
        ("vsphere://u@vc/DC0?poll_interval=0", {}, "more than 0"),
        ("vsphere://u@vc/DC0?priority=urgent", {}, "priority"),
        ("vsphere://u@vc/DC0?thumbprint=abc", {}, "SHA-1, SHA-256 or SHA-512"),
        ("vsphere://u@vc/DC0", {"ca_file": "/no/such/ca.pem"}, "not a readable file"),
        ("vsphere://u@vc/DC0?insecure=1&thumbprint=" + "a" * 64, {}, "contradicts"),
    ],
)
def test_bad_input_is_refused(uri: str, options: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        parse(uri, {"password": PW, **options})


def test_options_from_the_query_and_thumbprint_forms() -> None:
    sha1 = ":".join(["AB"] * 20)
    s = parse(
        f"vsphere://u@vc/DC0?thumbprint={sha1}&timeout=5&priority=high&poll_interval=0.2",
        {"password": PW},
    )
    assert s.thumbprint == "ab" * 20
    assert (s.timeout, s.priority, s.poll_interval) == (5.0, "highPriority", 0.2)
    assert parse("vsphere://u@vc?insecure=yes", {"password": PW}).insecure
    # durations in the core's one dialect, from the query or natively
    assert parse("vsphere://u@vc?check_timeout=2m", {"password": PW}).check_timeout == 120.0
    assert parse("vsphere://u@vc", {"password": PW, "timeout": 1.5}).timeout == 1.5


def test_docs_options_table_is_the_declaration() -> None:
    assert marked_block(DOCS, "options-table") == markdown_table(OPTIONS)


def test_secret_option_never_shows_its_value() -> None:
    with pytest.raises(InvalidInput) as info:
        parse("vsphere://u@vc/DC0", {"password": 12345678})
    assert "12345678" not in str(info.value)


def test_plugin_is_registered_through_its_entry_point() -> None:
    spec = load_plugins(reload=True).backends.get("vsphere")
    assert spec.plugin == "vsphere"
    assert spec.options == OPTIONS
    from vmmove_vsphere.backend import VSphereBackend

    assert spec.capabilities == VSphereBackend.capabilities
    caps = VSphereBackend.capabilities
    assert set(caps.names()) == {
        "live",
        "cold",
        "cancel",
        "storage_move",
        "choose_target",
        "relocate_stopped",
    }


def test_listing_backends_does_not_import_pyvmomi() -> None:
    code = (
        "import sys; from vmmove.plugins import load_plugins; "
        "load_plugins().backends.get('vsphere'); "
        "print(any(m.split('.')[0] in ('pyVmomi', 'pyVim') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _FakeFault(Exception):
    _wsdlName = "FakeFault"  # noqa: N815 (pyVmomi's name)
    msg = ""


def _fault(*names: str, msg: str = "it went wrong") -> Exception:
    """A stand-in for a pyVmomi fault: classes carry ``_wsdlName`` along the hierarchy."""
    cls: type = _FakeFault
    for name in reversed(names):
        cls = type(name, (cls,), {"_wsdlName": name})
    fault = cls()
    fault.msg = msg
    fault.faultMessage = []
    return fault


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        (("InsufficientMemoryResourcesFault", "InsufficientResourcesFault"), ReservationRefused),
        (("TaskInProgress",), Conflict),
        (("ManagedObjectNotFound",), NotFound),
        (("InvalidLogin",), AuthenticationFailed),
        (("InvalidHostState", "InvalidState"), PrecheckFailed),
        (("InvalidPowerState", "InvalidState"), PrecheckFailed),
        (("InvalidArgument",), PrecheckFailed),
    ],
)
def test_refusals_map_onto_the_error_tree(names: tuple[str, ...], kind: type) -> None:
    error = faults.refusal(_fault(*names), "vSphere refused to move vm-1", "esx-2")
    assert type(error) is kind
    assert names[0] in str(error)
    if isinstance(error, PrecheckFailed):
        assert [p.code for p in error.problems] == [names[0]]
        assert error.problems[0].message.startswith("esx-2: ")


def test_check_results_become_problems() -> None:
    fault = _fault("MigrationFault", msg="network names differ")
    fault.faultMessage = [type("M", (), {"message": "VM Network vs. Lab"})()]
    error = faults.problem(fault, where="esx-2")
    warning = faults.problem(fault, severity="warning")
    assert (error.severity, error.code) == ("error", "MigrationFault")
    assert error.message == "esx-2: MigrationFault: network names differ (VM Network vs. Lab)"
    assert warning.severity == "warning"
