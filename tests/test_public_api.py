"""The public surface is deliberate: adding or removing a name is a visible change."""

from __future__ import annotations

import subprocess
import sys

import vmmove

PUBLIC = {
    "PRESETS", "AuthenticationFailed", "Backend", "BackendNotFound", "BackendProtocolError",
    "Capabilities", "Capacity", "Conflict", "Connection", "ConnectionFailed", "CpuInfo",
    "EventKind", "Figures", "HostInfo", "HostState", "InsecureConnectionWarning", "InvalidInput",
    "Intent", "Job", "JobRef", "JobStatus",
    "MemoryStore", "Migration", "MigrationCancelled", "MigrationError", "MigrationEvent",
    "MigrationFailed", "MigrationMode", "MigrationRecord", "MigrationSpec", "MigrationTimedOut",
    "NotFound", "NotSupported", "Phase", "Policy", "PostcopyFailed", "PowerState",
    "PrecheckFailed", "Prediction", "Problem", "Progress", "RecordStore", "Reservation",
    "ReservationRefused",
    "Secret", "Side", "Step", "Storage", "VMInfo", "VMMoveError", "WaitTimeout", "__version__",
    "attach", "connect", "hookimpl", "predict",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(vmmove.__all__) == PUBLIC
    for name in vmmove.__all__:
        assert hasattr(vmmove, name), name


def test_every_error_is_a_vmmove_error() -> None:
    from vmmove import errors

    for name in errors.__all__:
        if name == "InsecureConnectionWarning":  # the one warning beside the tree
            assert issubclass(errors.InsecureConnectionWarning, UserWarning)
            continue
        assert issubclass(getattr(errors, name), vmmove.VMMoveError)


def test_import_loads_no_backend_library_and_no_plugin() -> None:
    code = (
        "import sys, vmmove; "
        "heavy = {'libvirt', 'pyVmomi', 'winrm', 'kubernetes', 'requests', 'rich', 'click'}; "
        "print(sorted(heavy & set(sys.modules)), 'vmmove.sim.backend' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"


def test_secret_never_shows_itself() -> None:
    s = vmmove.Secret("hunter2-canary")
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"password": s})):
        assert "hunter2" not in text
    assert s.reveal() == "hunter2-canary"


def test_uri_password_is_redacted() -> None:
    with vmmove.connect("sim://") as conn:
        assert "sim://" in repr(conn)
    assert vmmove._redact("x://u:hunter2@h:1/p") == "x://u:***@h:1/p"
