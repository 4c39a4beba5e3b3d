"""A fake Nutanix Prism, to test Nutanix automation without a cluster.

:class:`FakePrism` serves Prism Central's v4 API (``api="v4.0"``, or an older ``"v4.0.b1"``)
or Prism Element's v2.0 alone (``api="v2.0"``) over real HTTPS with its own CA, HTTP Basic,
ETags, ``NTNX-Request-Id`` idempotency and tasks that progress with its clock::

    from vmmove_nutanix.testing import FakePrism

    with FakePrism() as prism:
        prism.state.sample()          # node-a, node-b, node-c (maintenance); five VMs
        print(prism.uri, prism.ca_file("/tmp"))

:meth:`FakePrism.fault` breaks requests (an error with ``Retry-After``, a dropped
connection after the server acted, a slow answer); :meth:`PrismState.fail_next` fails the
next task of a VM; a :class:`ManualClock` lets a test decide when tasks end.

Also runs as a process: ``python -m vmmove_nutanix.testing --help``. In pytest, the
``fake_prism`` fixture (a ``pytest11`` entry point of vmmove-nutanix).
"""

from __future__ import annotations

from vmmove_nutanix.testing.app import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    V4_VERSIONS,
    Fault,
    LoggedRequest,
    PrismApp,
)
from vmmove_nutanix.testing.prism import (
    ApiError,
    FakeHost,
    FakeTask,
    FakeVM,
    ManualClock,
    PrismState,
    TaskTiming,
    stable_id,
)
from vmmove_nutanix.testing.server import FakePrism

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "V4_VERSIONS",
    "ApiError",
    "FakeHost",
    "FakePrism",
    "FakeTask",
    "FakeVM",
    "Fault",
    "LoggedRequest",
    "ManualClock",
    "PrismApp",
    "PrismState",
    "TaskTiming",
    "stable_id",
]
