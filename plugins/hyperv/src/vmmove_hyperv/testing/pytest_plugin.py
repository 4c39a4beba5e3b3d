"""pytest fixtures for the fake Hyper-V hosts (registered through the ``pytest11`` entry
point of vmmove-hyperv; ``-p no:vmmove_hyperv.testing.pytest_plugin`` turns it off).

Kept light: the fake is imported only when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vmmove_hyperv.testing.fake import FakeHyperV


@pytest.fixture
def fake_hyperv() -> Iterator[FakeHyperV]:
    """Started fake Hyper-V hosts (hv1, hv2, hv3; six VMs) on loopback, in the Windows
    PowerShell 5.1 output shape; connect with ``fake_hyperv.uri`` and
    ``password=vmmove.Secret(fake_hyperv.password)``."""
    from vmmove_hyperv.testing.fake import FakeHyperV  # noqa: PLC0415

    with FakeHyperV() as fake:
        yield fake
