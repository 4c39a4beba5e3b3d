"""Live migration on Prism's own terms, on v4.0 and v2.0 (``api``): a lost answer to the
migrate POST starts exactly one migration, a failed task leaves the VM on its source, a
stale ETag is re-read and retried once (v4), and the server picks the API generation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import vmmove
from vmmove.engine import Connection
from vmmove.machine import Phase
from vmmove.model import MigrationSpec
from vmmove.policy import Policy
from vmmove_nutanix.testing import FakePrism

MIGRATE = r"/migrate(-to-host)?$"


def test_a_dropped_answer_to_the_migrate_post_starts_exactly_one_migration(
    prism: FakePrism, connect: Callable[..., Connection]
) -> None:
    # Prism acts on the POST, then the connection drops before the answer arrives.
    prism.fault("POST", MIGRATE, drop=True)
    conn = connect(prism)
    record = conn.migrate("web-1", to="node-b").wait(30)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == conn.host("node-b").id == conn.vm("web-1").host
    assert any("answer to the start request was lost" in w for w in record.warnings)
    assert len(prism.state.migrations("web-1")) == 1, "exactly one migration"
    posts = [r for r in prism.app.log if r.method == "POST" and "migrate" in r.path]
    if prism.api != "v2.0":
        # the replay carried the same request id and was answered from Prism's memory
        assert len(posts) == 2
        assert posts[0].request_id == posts[1].request_id != ""
    else:
        assert len(posts) == 1  # v2.0 has no request id: never resent, found in the tasks


def test_a_failed_task_leaves_the_vm_on_its_source(
    prism: FakePrism, connect: Callable[..., Connection]
) -> None:
    prism.state.fail_next("web-1", "VmMigrate", "host node-b: not enough memory (injected)")
    conn = connect(prism)
    source = conn.vm("web-1").host
    m = conn.migrate("web-1", to="node-b")
    with pytest.raises(vmmove.MigrationFailed) as info:
        m.wait(30)
    assert m.record.phase is Phase.FAILED
    assert "not enough memory" in (m.record.error or "")
    assert info.value.vm_host == source == m.record.vm_host == conn.vm("web-1").host


@pytest.mark.apis("v4.0")
def test_a_stale_etag_is_read_again_checked_again_and_retried_once(
    prism: FakePrism, connect: Callable[..., Connection]
) -> None:
    conn = connect(prism)
    vm = prism.state.vm_named("web-1")
    # someone else updates the VM between vmmove's GET and its POST
    prism.fault("POST", "migrate-to-host", before=vm.touch)
    record = conn.migrate("web-1", to="node-b").wait(30)
    assert record.phase is Phase.COMPLETED
    posts = [r for r in prism.app.log if "migrate-to-host" in r.path]
    assert [r.status for r in posts] == [412, 202]
    assert posts[0].if_match != posts[1].if_match  # the second carries the fresh ETag
    assert posts[0].request_id == posts[1].request_id


@pytest.mark.apis("v4.0")
def test_an_etag_stale_twice_is_refused_and_nothing_moves(
    prism: FakePrism, connect: Callable[..., Connection]
) -> None:
    conn = connect(prism)
    source = conn.vm("web-1").host
    prism.fault("POST", "migrate-to-host", before=prism.state.vm_named("web-1").touch, times=2)
    m = conn.migrate("web-1", to="node-b")
    with pytest.raises(vmmove.VMMoveError, match="changed twice"):
        m.wait(30)
    assert prism.state.migrations("web-1") == []
    assert conn.vm("web-1").host == source


@pytest.mark.apis("v4.0")
def test_the_recheck_after_a_412_refuses_a_vm_that_stopped(
    prism: FakePrism, connect: Callable[..., Connection]
) -> None:
    conn = connect(prism)
    backend = conn.backend
    vm = conn.vm("web-1")
    target = conn.host("node-b")
    fake_vm = prism.state.vm_named("web-1")

    def shut_down_elsewhere() -> None:  # what the 412 is about: the VM stopped meanwhile
        fake_vm.power = "OFF"
        fake_vm.touch()

    prism.fault("POST", "migrate-to-host", before=shut_down_elsewhere)
    with pytest.raises(vmmove.Conflict, match="powered off"):
        backend.start(
            vm,
            target,
            MigrationSpec(vm=vm.id, target=target.id),
            vmmove.MigrationMode.LIVE,
            policy=Policy(name="test"),
            needs=frozenset(),
            reservation=None,
            request_id="r-1",
        )
    assert prism.state.migrations("web-1") == []


@pytest.mark.apis("v4.0")
@pytest.mark.parametrize("served", ["v4.0", "v4.0.b1", "v4.0.a1", "v2.0"])
def test_the_api_generation_is_what_the_server_answers(
    served: str, make_prism: Callable[..., FakePrism], connect: Callable[..., Connection]
) -> None:
    prism = make_prism(api=served)
    uri = f"nutanix://admin@127.0.0.1:{prism.port}"  # the same URI for every server
    conn = connect(prism, uri=uri)
    assert conn.backend.api.version == served  # type: ignore[attr-defined]
    assert conn.vm("web-1").host == conn.host("node-a").id
    tried = [r.path.split("/")[3] for r in prism.app.log if "clustermgmt" in r.path]
    newer = ("v4.0", "v4.0.b1", "v4.0.a1")
    expected = list(newer[: newer.index(served) + 1]) if served in newer else list(newer)
    assert list(dict.fromkeys(tried)) == expected  # newest first, the first that answers


@pytest.mark.apis("v4.0")
def test_nutanix_v2_scheme_never_asks_for_v4(
    make_prism: Callable[..., FakePrism], connect: Callable[..., Connection]
) -> None:
    prism = make_prism(api="v4.0")  # Prism Central: no v2.0 here
    with pytest.raises(vmmove.ConnectionFailed, match=r"does not answer Prism v2\.0"):
        connect(prism, uri=f"nutanix+v2://127.0.0.1:{prism.port}")
    assert not [r for r in prism.app.log if "/api/vmm/" in r.path or "clustermgmt" in r.path]
