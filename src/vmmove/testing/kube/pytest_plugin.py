"""pytest fixtures for the Kubernetes/KubeVirt fakes.

Enable with ``-p vmmove.testing.kube.pytest_plugin`` or ``pytest_plugins =
["vmmove.testing.kube.pytest_plugin"]`` in a root ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vmmove.testing.kube.fake import FakeKube


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    """A started fake cluster with the sample estate (``FakeKube.sample``); stopped after."""
    with FakeKube() as kube:
        kube.sample()
        yield kube


@pytest.fixture
def fake_kubeconfig(fake_kube: FakeKube, tmp_path: Path) -> Path:
    """A kubeconfig for ``fake_kube``: context ``fake``, namespace ``default``."""
    return fake_kube.kubeconfig(tmp_path / "kubeconfig")
