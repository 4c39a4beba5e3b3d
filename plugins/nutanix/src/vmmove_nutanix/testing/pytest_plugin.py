"""pytest fixtures for the fake Prism.

Registered as a ``pytest11`` entry point of vmmove-nutanix (named after this module, so
that an explicit ``-p vmmove_nutanix.testing.pytest_plugin`` does not load it twice);
``-p no:vmmove_nutanix.testing.pytest_plugin`` turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmmove_nutanix.testing.server import FakePrism


@pytest.fixture
def fake_prism() -> Iterator[FakePrism]:
    """A started fake Prism Central (v4.0) with the sample estate; stopped after."""
    with FakePrism() as prism:
        prism.state.sample()
        yield prism
