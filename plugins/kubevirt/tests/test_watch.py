"""The informers' watches: resumed from the last resourceVersion after a break (nothing
missed, nothing twice), re-listed after 410 Gone, and migrations that ride it out."""

from __future__ import annotations

from typing import Any

from vmmove import Phase
from vmmove_kubevirt.testing import FakeKube

VMIMS = "virtualmachineinstancemigrations"
VMIS = "virtualmachineinstances"


def server_events(kube: FakeKube, plural: str) -> list[tuple[str, str, str]]:
    key = f"{plural}.kubevirt.io"
    return [(e.type, e.name, str(e.rv)) for e in kube.store.history() if e.resource == key]


def test_watch_resumes_after_breaks_without_duplicates_or_gaps(
    kube: FakeKube, connect: Any
) -> None:
    # The first three watches of migrations break off after two events each.
    fault = kube.api_fault(watch=True, path=f"{VMIMS}$", drop_watch_after=2, times=3)
    conn = connect(kube)
    record = conn.migrate("db-1", to="node-b").wait(30)
    assert record.phase is Phase.COMPLETED
    inf = conn.backend.informer(VMIMS)
    assert inf is not None
    expected = server_events(kube, VMIMS)
    assert kube.wait_for(lambda: list(inf.log)[-1:] == expected[-1:], 10)
    assert fault.hits == 3
    assert inf.reconnects >= 3
    assert inf.relists == 0
    seen = list(inf.log)
    assert len({rv for _, _, rv in seen}) == len(seen), "an event arrived twice"
    assert seen == expected, "an event was missed"


def test_expired_resource_version_means_a_relist(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube)
    conn.migrate("web-1", to="node-b").wait(30)  # the informers are running now
    inf = conn.backend.informer(VMIS)
    assert inf is not None
    assert inf.relists == 0
    # Keep the VMI watch from reconnecting while the cluster moves on and compacts.
    kube.api_fault(watch=True, path=f"{VMIS}$", status=503, times=None)
    breaks = inf.reconnects
    kube.server.drop_watches()
    assert kube.wait_for(lambda: inf.reconnects > breaks, 10)
    kube.store.mutate(
        kube.controller.rt_vmi,
        "default",
        "db-1",
        lambda o: o["metadata"].setdefault("labels", {}).update(team="red"),
    )
    kube.store.compact()
    kube.server.clear_faults()
    assert kube.wait_for(lambda: inf.relists >= 1, 10), inf.last_error
    assert kube.wait_for(
        lambda: (
            ((inf.get("db-1") or {}).get("metadata") or {}).get("labels", {}).get("team") == "red"
        ),
        10,
    )
    # And migrations go on as before.
    assert conn.migrate("db-1", to="node-b").wait(30).vm_host == "node-b"


def test_a_migration_rides_out_broken_watches_and_api_errors(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=1.5))
    conn = connect(kube)
    m = conn.migrate("db-1", to="node-b")
    assert kube.wait_for(lambda: m.record.phase is Phase.TRANSFERRING, 10)
    kube.api_fault(path="virtualmachineinstance", status=500, times=6)
    kube.server.drop_watches()
    record = m.wait(30)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "node-b"
