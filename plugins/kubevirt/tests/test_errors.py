"""API errors (401, 403, 409, 422, 500, dropped connections) as vmmove's error tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException

import vmmove
from vmmove import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    InvalidInput,
    MigrationFailed,
    NotFound,
)
from vmmove_kubevirt.kube import api_error
from vmmove_kubevirt.policy import POLICY_LABEL
from vmmove_kubevirt.testing import FakeKube

VMIMS = "virtualmachineinstancemigrations"


def untouched(kube: FakeKube, vmi: str, node: str) -> None:
    assert kube.vmi_node(vmi) == node
    assert kube.list("VirtualMachineInstanceMigration") == []
    labels = (kube.get("VirtualMachineInstance", vmi) or {})["metadata"].get("labels", {})
    assert POLICY_LABEL not in labels


def test_a_wrong_token_is_authentication_failed(kube: FakeKube, tmp_path: Path) -> None:
    path = kube.kubeconfig(tmp_path / "kubeconfig", token="not-the-token")
    with pytest.raises(AuthenticationFailed, match="401"):
        vmmove.connect("kubevirt://fake/default", kubeconfig=str(path))


def test_forbidden_is_authentication_failed_with_the_reason(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube)
    kube.api_fault(
        method="GET",
        path="/api/v1/nodes$",
        status=403,
        message='nodes is forbidden: User "system:serviceaccount:default:vmmove" cannot '
        'list resource "nodes" in API group "" at the cluster scope',
    )
    with pytest.raises(AuthenticationFailed, match="forbidden"):
        conn.hosts()


def test_409_on_create_fails_the_migration_and_changes_nothing(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube)
    kube.api_fault(
        method="POST",
        path=f"{VMIMS}$",
        status=409,
        reason="AlreadyExists",
        message=f'{VMIMS}.kubevirt.io "vmmove-web-1-abcde" already exists',
    )
    m = conn.migrate("web-1", to="node-b")
    with pytest.raises((Conflict, MigrationFailed), match="already exists"):
        m.wait(30)
    assert m.record.error_type == "Conflict"
    assert m.record.vm_host == "node-a"
    untouched(kube, "web-1", "node-a")


def test_422_on_create_is_invalid_input(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube)
    kube.api_fault(
        method="POST",
        path=f"{VMIMS}$",
        status=422,
        reason="Invalid",
        message="VirtualMachineInstanceMigration.kubevirt.io is invalid: spec.vmiName: Required",
    )
    m = conn.migrate("web-1", to="node-b")
    with pytest.raises(InvalidInput, match="422"):
        m.wait(30)
    untouched(kube, "web-1", "node-a")


def test_500_is_connection_failed(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube)
    kube.api_fault(method="GET", path="virtualmachineinstances$", status=500, times=None)
    with pytest.raises(ConnectionFailed, match="500"):
        conn.vms()


def test_a_dropped_connection_is_connection_failed_and_a_create_is_never_resent(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube)
    kube.api_fault(method="GET", path="/api/v1/nodes$", drop=True, times=None)
    with pytest.raises(ConnectionFailed, match="unreachable"):
        conn.hosts()
    kube.server.clear_faults()
    kube.api_fault(method="POST", path=f"{VMIMS}$", drop=True)
    conn.poll_grace = 1.0  # how long the engine asks attach() whether the create was applied
    m = conn.migrate("web-1", to="node-b")
    with pytest.raises(MigrationFailed, match="no job"):
        m.wait(30)
    assert any("answer to the start request was lost" in w for w in m.record.warnings)
    assert m.record.vm_host == "node-a"
    posts = list(kube.server.requests_matching("POST", f"{VMIMS}$"))
    assert len(posts) == 1, "a migration create was sent twice"
    # The policy label stays while the create might still be applied; closing the
    # connection finds no VMIM for the request and takes it off.
    conn.close()
    untouched(kube, "web-1", "node-a")


def test_an_unreachable_server_is_connection_failed(kube: FakeKube, tmp_path: Path) -> None:
    path = kube.kubeconfig(tmp_path / "kubeconfig")
    kube.stop()
    with pytest.raises(ConnectionFailed):
        vmmove.connect("kubevirt://fake/default", kubeconfig=str(path), timeout=2)


def test_a_cluster_without_kubevirt_is_refused(kube: FakeKube, tmp_path: Path) -> None:
    for key in [k for k in kube.store.resources if k.endswith(".kubevirt.io")]:
        del kube.store.resources[key]
    path = kube.kubeconfig(tmp_path / "kubeconfig")
    with pytest.raises(ConnectionFailed, match="is KubeVirt installed"):
        vmmove.connect("kubevirt://fake/default", kubeconfig=str(path))


def test_bad_uris_and_contexts_are_invalid_input(kube: FakeKube, tmp_path: Path) -> None:
    path = str(kube.kubeconfig(tmp_path / "kubeconfig"))
    with pytest.raises(InvalidInput, match="no kubeconfig context 'nope'"):
        vmmove.connect("kubevirt://nope/default", kubeconfig=path)
    with pytest.raises(InvalidInput, match="unknown kubevirt:// option"):
        vmmove.connect("kubevirt://fake/default?colour=red", kubeconfig=path)
    with pytest.raises(InvalidInput):
        vmmove.connect("kubevirt://fake/default", kubeconfig=path, poll_interval="soon")
    with pytest.raises(InvalidInput, match="Kubernetes configuration"):
        vmmove.connect("kubevirt://fake/default", kubeconfig=str(tmp_path / "missing"))


def _exc(status: int, message: str = "msg") -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (401, "Unauthorized", AuthenticationFailed),
        (403, "forbidden", AuthenticationFailed),
        (404, "not found", NotFound),
        (409, "the object has been modified", Conflict),
        (400, "admission webhook denied the request: in-flight migration detected.", Conflict),
        (400, "bad", InvalidInput),
        (422, "invalid", InvalidInput),
        (500, "etcd is sad", ConnectionFailed),
        (503, "unavailable", ConnectionFailed),
        (0, "SSLError", ConnectionFailed),
    ],
)
def test_api_errors_map_onto_the_error_tree(status: int, message: str, kind: type) -> None:
    err = api_error(_exc(status, message), "create thing")
    assert type(err) is kind
    assert str(err).startswith("create thing")


def test_a_create_whose_answer_is_lost_is_found_not_resent(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube)
    kube.api_fault(method="POST", path=f"{VMIMS}$", drop_response=True)
    record = conn.migrate("web-1", to="node-b").wait(30)
    assert record.vm_host == "node-b" == kube.vmi_node("web-1")
    assert len(list(kube.server.requests_matching("POST", f"{VMIMS}$"))) == 1
    (vmim,) = kube.list("VirtualMachineInstanceMigration")
    assert record.job_ref["migration"] == vmim["metadata"]["name"]
