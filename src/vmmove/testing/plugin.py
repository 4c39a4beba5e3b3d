"""pytest plugin, registered under the ``pytest11`` entry point.

Kept light: it imports vmmove's engine only when one of its fixtures is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vmmove.engine import Connection


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vmmove_contract: a test from vmmove's backend contract suite"
    )


@pytest.fixture
def vmmove_sim() -> Iterator[Connection]:
    """A connection to a fresh simulator with the built-in sample estate, on a virtual clock."""
    import vmmove  # noqa: PLC0415

    with vmmove.connect("sim://") as conn:
        yield conn


@pytest.fixture
def contract_setup() -> None:
    """Override this fixture in a :class:`BackendContract` subclass."""
    pytest.fail(
        "a BackendContract subclass must provide a `contract_setup` fixture "
        "returning vmmove.testing.contract.ContractSetup"
    )
