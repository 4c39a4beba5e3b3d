"""docs/backends/index.md's capabilities table is what the installed plugins declare."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmmove.plugins import capabilities_markdown, load_plugins
from vmmove.testing.docs import marked_block

PAGE = Path(__file__).parents[1] / "docs" / "backends" / "index.md"
#: every backend this repository ships (plugins/*), besides the built-in simulator
SHIPPED = {"sim", "libvirt", "vsphere", "kubevirt", "hyperv", "nutanix"}


def test_the_capabilities_table_is_generated_from_the_declarations() -> None:
    specs = [s for s in load_plugins().backends.all() if s.plugin in SHIPPED]
    missing = SHIPPED - {s.plugin for s in specs}
    if missing:  # a partial install (CI installs every plugin under plugins/)
        pytest.skip(f"not installed here: {', '.join(sorted(missing))}")
    assert marked_block(PAGE, "capabilities-table") == capabilities_markdown(specs), (
        "regenerate with: python -c 'from vmmove.plugins import *; "
        "print(capabilities_markdown(load_plugins().backends.all()))'"
    )
