"""Wire-level fakes of Kubernetes and KubeVirt, to test KubeVirt automation without a cluster.

:class:`FakeKube` serves the real Kubernetes HTTP API (HTTP/1.1, TLS, bearer tokens,
watches) from an in-memory store, with a fake KubeVirt that walks
``VirtualMachineInstanceMigration`` objects through their phases, so that the official
``kubernetes`` client and ``kubectl --validate=false`` work against it unchanged::

    from vmmove_kubevirt.testing import FakeKube, MigrationTiming

    with FakeKube(timing=MigrationTiming(running=2.0)) as kube:
        kube.sample()                                   # three nodes, five VMs
        kubeconfig = kube.kubeconfig("/tmp/kubeconfig")  # context "fake", namespace "default"
        ...

``FakeKube(release="1.7")`` imitates another KubeVirt release line (default: the newest,
``"1.9"``); the variant switches are listed in :mod:`vmmove_kubevirt.testing.controller`.
:meth:`FakeKube.outage` takes the API away for a while; :class:`ApiFault` breaks single
requests (an error, a dropped answer, a write applied after the client gave up).

Standard library only. Also runs as a process: ``python -m vmmove_kubevirt.testing --help``.
In pytest, :mod:`vmmove_kubevirt.testing.pytest_plugin` gives the ``fake_kube`` fixture (a
``pytest11`` entry point of vmmove-kubevirt: loaded wherever the distribution is installed).
"""

from __future__ import annotations

from vmmove_kubevirt.testing.controller import (
    CLUSTER_MIGRATION_DEFAULTS,
    DEFAULT_RELEASE,
    MIGRATION_PHASES,
    RELEASES,
    KubeVirtController,
    KubeVirtRelease,
    MigrationFault,
    MigrationTiming,
)
from vmmove_kubevirt.testing.fake import DEFAULT_TOKEN, FakeKube
from vmmove_kubevirt.testing.server import ApiFault, KubeApiServer, Outage, RequestLog
from vmmove_kubevirt.testing.store import ApiError, Event, ObjectStore, ResourceType

__all__ = [
    "CLUSTER_MIGRATION_DEFAULTS",
    "DEFAULT_RELEASE",
    "DEFAULT_TOKEN",
    "MIGRATION_PHASES",
    "RELEASES",
    "ApiError",
    "ApiFault",
    "Event",
    "FakeKube",
    "KubeApiServer",
    "KubeVirtController",
    "KubeVirtRelease",
    "MigrationFault",
    "MigrationTiming",
    "ObjectStore",
    "Outage",
    "RequestLog",
    "ResourceType",
]
