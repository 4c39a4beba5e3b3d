"""pytest fixtures for the Kubernetes/KubeVirt fakes.

Registered as a ``pytest11`` entry point of vmmove-kubevirt (named after this module, so
that an explicit ``-p vmmove_kubevirt.testing.pytest_plugin`` does not load it twice);
``-p no:vmmove_kubevirt.testing.pytest_plugin`` turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vmmove_kubevirt.testing.fake import FakeKube


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
