"""vmmove_kubevirt.testing on its own: the official client and kubectl against the fake API
server, the fake KubeVirt controller, and the standalone process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch

from vmmove_kubevirt.testing import FakeKube, MigrationTiming

KV = ("kubevirt.io", "v1", "default")
VMIMS, VMIS = "virtualmachineinstancemigrations", "virtualmachineinstances"


@pytest.fixture
def api(kube: FakeKube, tmp_path: Path) -> Iterator[Any]:
    """The official client's ApiClient for ``kube``, from a kubeconfig (TLS, bearer token)."""
    path = kube.kubeconfig(tmp_path / "kubeconfig")
    api_client = config.new_client_from_config(str(path), context="fake", persist_config=False)
    yield api_client
    api_client.close()


def migration(vmi: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": f"{vmi}-"},
        "spec": {"vmiName": vmi, **spec},
    }


def status_of(exc: client.ApiException) -> dict[str, Any]:
    return dict(json.loads(exc.body))


def test_create_answers_201_with_server_fields(kube: FakeKube, api: Any) -> None:
    co = client.CustomObjectsApi(api)
    obj, code, _ = co.create_namespaced_custom_object_with_http_info(*KV, VMIMS, migration("web-1"))
    assert code == 201
    meta = obj["metadata"]
    assert meta["name"].startswith("web-1-")
    assert meta["uid"]
    assert meta["creationTimestamp"]
    assert int(meta["resourceVersion"]) > 0
    assert meta["finalizers"] == ["kubevirt.io/migrationJobFinalize"]  # KubeVirt's webhook
    with pytest.raises(client.ApiException) as info:
        co.create_namespaced_custom_object(
            *KV, VMIMS, {**migration("web-1"), "metadata": {"name": meta["name"]}}
        )
    assert info.value.status == 409
    assert status_of(info.value)["reason"] == "AlreadyExists"


def test_errors_are_status_objects(api: Any) -> None:
    co = client.CustomObjectsApi(api)
    with pytest.raises(client.ApiException) as info:
        co.get_namespaced_custom_object(*KV, VMIS, "nope")
    body = status_of(info.value)
    assert info.value.status == 404
    assert body["kind"] == "Status"
    assert body["reason"] == "NotFound"
    assert body["code"] == 404
    with pytest.raises(client.ApiException) as info:
        co.create_namespaced_custom_object(*KV, VMIMS, {"metadata": {"generateName": "x-"}})
    assert info.value.status == 422


def test_status_is_only_written_through_the_subresource(api: Any) -> None:
    co = client.CustomObjectsApi(api)
    vmi = co.get_namespaced_custom_object(*KV, VMIS, "web-1")
    vmi["status"]["phase"] = "Failed"
    vmi["metadata"].setdefault("labels", {})["x"] = "1"
    after = co.replace_namespaced_custom_object(*KV, VMIS, "web-1", vmi)
    assert after["status"]["phase"] == "Running"
    assert after["metadata"]["labels"]["x"] == "1"
    after = co.patch_namespaced_custom_object_status(
        *KV, VMIS, "web-1", {"status": {"phase": "Paused"}, "metadata": {"labels": {"y": "2"}}}
    )
    assert after["status"]["phase"] == "Paused"
    assert "y" not in after["metadata"]["labels"]
    stale = dict(vmi, metadata={**vmi["metadata"], "resourceVersion": "1"})
    with pytest.raises(client.ApiException) as info:
        co.replace_namespaced_custom_object(*KV, VMIS, "web-1", stale)
    assert info.value.status == 409
    assert status_of(info.value)["reason"] == "Conflict"


def test_merge_and_json_patches(api: Any) -> None:
    co = client.CustomObjectsApi(api)
    co.patch_namespaced_custom_object(
        *KV, VMIS, "web-1", {"metadata": {"labels": {"a": "1", "b": "2"}}}
    )
    obj = co.patch_namespaced_custom_object(
        *KV, VMIS, "web-1", {"metadata": {"labels": {"a": None}}}
    )
    assert "a" not in obj["metadata"]["labels"]
    assert obj["metadata"]["labels"]["b"] == "2"
    obj = co.patch_namespaced_custom_object(
        *KV,
        VMIS,
        "web-1",
        [
            {"op": "test", "path": "/metadata/labels/b", "value": "2"},
            {"op": "add", "path": "/metadata/labels/c~1d", "value": "3"},
            {"op": "remove", "path": "/metadata/labels/b"},
        ],
        _content_type="application/json-patch+json",
    )
    assert obj["metadata"]["labels"]["c/d"] == "3"
    assert "b" not in obj["metadata"]["labels"]
    with pytest.raises(client.ApiException) as info:
        co.patch_namespaced_custom_object(
            *KV,
            VMIS,
            "web-1",
            [{"op": "test", "path": "/metadata/labels/c~1d", "value": "nope"}],
            _content_type="application/json-patch+json",
        )
    assert info.value.status == 422


def test_label_and_field_selectors(api: Any) -> None:
    co = client.CustomObjectsApi(api)

    def names(**kw: Any) -> list[str]:
        items = co.list_namespaced_custom_object(*KV, VMIS, **kw)["items"]
        return sorted(o["metadata"]["name"] for o in items)

    assert names(label_selector="kubevirt.io/nodeName=node-b") == ["gpu-1", "legacy-1"]
    assert names(label_selector="kubevirt.io/nodeName!=node-b") == ["db-1", "web-1"]
    assert names(label_selector="kubevirt.io/domain in (db-1,gpu-1)") == ["db-1", "gpu-1"]
    assert names(label_selector="!kubevirt.io/domain") == ["legacy-1"]
    assert names(label_selector="kubevirt.io/domain,kubevirt.io/nodeName=node-a") == [
        "db-1",
        "web-1",
    ]
    assert names(field_selector="metadata.name=db-1") == ["db-1"]
    with pytest.raises(client.ApiException) as info:
        names(field_selector="status.phase=Running")  # custom resources: name/namespace only
    assert info.value.status == 400


def test_watch_resumes_from_a_resource_version_and_410_when_expired(
    kube: FakeKube, api: Any
) -> None:
    co = client.CustomObjectsApi(api)
    start = co.list_namespaced_custom_object(*KV, VMIS)["metadata"]["resourceVersion"]
    for value in ("1", "2", "3"):
        co.patch_namespaced_custom_object(
            *KV, VMIS, "web-1", {"metadata": {"labels": {"n": value}}}
        )
    w = watch.Watch()
    seen = []
    for event in w.stream(
        co.list_namespaced_custom_object, *KV, VMIS, resource_version=start, timeout_seconds=1
    ):
        seen.append((event["type"], event["raw_object"]["metadata"]["labels"]["n"]))
        if len(seen) == 3:
            w.stop()
    assert seen == [("MODIFIED", "1"), ("MODIFIED", "2"), ("MODIFIED", "3")]
    kube.store.compact()
    co.patch_namespaced_custom_object(*KV, VMIS, "web-1", {"metadata": {"labels": {"n": "4"}}})
    with pytest.raises(client.ApiException) as info:
        for _ in watch.Watch().stream(
            co.list_namespaced_custom_object, *KV, VMIS, resource_version=start, timeout_seconds=1
        ):
            pass
    assert info.value.status == 410


def test_deleting_a_running_migration_aborts_it_through_the_finalizer(
    make_kube: Any, tmp_path: Path
) -> None:
    kube: FakeKube = make_kube(timing=MigrationTiming(running=30.0, abort=0.1))
    path = kube.kubeconfig(tmp_path / "kubeconfig")
    api = config.new_client_from_config(str(path), context="fake", persist_config=False)
    try:
        co = client.CustomObjectsApi(api)
        name = co.create_namespaced_custom_object(*KV, VMIMS, migration("db-1"))["metadata"]["name"]

        def phase() -> str:
            vmim = kube.get("VirtualMachineInstanceMigration", name) or {}
            return str((vmim.get("status") or {}).get("phase"))

        assert kube.wait_for(lambda: phase() == "Running", 10)
        deleted = co.delete_namespaced_custom_object(*KV, VMIMS, name)
        assert deleted["metadata"]["deletionTimestamp"]  # held by KubeVirt's finalizer
        assert kube.wait_for(lambda: kube.get("VirtualMachineInstanceMigration", name) is None, 10)
        state = (kube.get("VirtualMachineInstance", "db-1") or {})["status"]["migrationState"]
        assert state["abortStatus"] == "Succeeded"
        assert state["failed"] is True
        assert kube.vmi_node("db-1") == "node-a"
    finally:
        api.close()


def test_one_active_migration_per_vmi(make_kube: Any, tmp_path: Path) -> None:
    kube: FakeKube = make_kube(timing=MigrationTiming(running=30.0))
    api = config.new_client_from_config(
        str(kube.kubeconfig(tmp_path / "kc")), context="fake", persist_config=False
    )
    try:
        co = client.CustomObjectsApi(api)
        co.create_namespaced_custom_object(*KV, VMIMS, migration("db-1"))
        assert kube.wait_for(
            lambda: (
                "migrationState" in (kube.get("VirtualMachineInstance", "db-1") or {})["status"]
            ),
            10,
        )
        with pytest.raises(client.ApiException) as info:
            co.create_namespaced_custom_object(*KV, VMIMS, migration("db-1"))
        assert info.value.status == 400
        assert "in-flight migration detected" in status_of(info.value)["message"]
    finally:
        api.close()


def test_bearer_token_and_tls_are_enforced(kube: FakeKube, tmp_path: Path) -> None:
    cfg = client.Configuration()
    cfg.host = kube.url
    cfg.ssl_ca_cert = str(tmp_path / "ca.crt")
    Path(cfg.ssl_ca_cert).write_text(kube.server.ca_pem or "")
    cfg.retries = False
    with client.ApiClient(cfg) as anonymous:
        with pytest.raises(client.ApiException) as info:
            client.CustomObjectsApi(anonymous).list_namespaced_custom_object(*KV, VMIS)
        assert info.value.status == 401
    cfg.api_key = {"authorization": f"Bearer {kube.token}"}
    with client.ApiClient(cfg) as trusted:
        assert client.CustomObjectsApi(trusted).list_namespaced_custom_object(*KV, VMIS)["items"]
    untrusted = client.Configuration()
    untrusted.host = kube.url
    untrusted.retries = False
    untrusted.api_key = {"authorization": f"Bearer {kube.token}"}
    with (
        client.ApiClient(untrusted) as stranger,
        pytest.raises((client.ApiException, urllib3.exceptions.HTTPError)),
    ):
        client.CustomObjectsApi(stranger).list_namespaced_custom_object(*KV, VMIS)


def test_plain_http_without_a_token(make_kube: Any, tmp_path: Path) -> None:
    kube: FakeKube = make_kube(tls=False, token=None)
    assert kube.url.startswith("http://")
    api = config.new_client_from_config(
        str(kube.kubeconfig(tmp_path / "kc")), context="fake", persist_config=False
    )
    try:
        items = client.CustomObjectsApi(api).list_namespaced_custom_object(*KV, VMIS)["items"]
        assert len(items) == 4
    finally:
        api.close()


def test_an_injected_delay_trips_a_read_timeout_the_client_retries(
    kube: FakeKube, api: Any
) -> None:
    fault = kube.api_fault(method="GET", path=f"{VMIS}$", delay=2.0)
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        *KV, VMIS, _request_timeout=(2, 0.3)
    )["items"]
    assert items
    assert fault.hits == 1  # timed out once, then urllib3 asked again


def _standalone(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    kc = tmp_path / "kubeconfig"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmmove_kubevirt.testing", "--kubeconfig", str(kc), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    if not line or not line[0]:
        proc.kill()
        proc.wait()
        pytest.fail(f"the fake did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line[0])


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_standalone_process_serves_the_python_client(tmp_path: Path) -> None:
    proc, ready = _standalone(tmp_path)
    try:
        assert ready["url"].startswith("https://127.0.0.1:")
        api = config.new_client_from_config(ready["kubeconfig"], persist_config=False)
        try:
            items = client.CustomObjectsApi(api).list_namespaced_custom_object(*KV, VMIS)["items"]
            assert {o["metadata"]["name"] for o in items} == {"web-1", "db-1", "legacy-1", "gpu-1"}
        finally:
            api.close()
    finally:
        _stop(proc)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_talks_to_the_standalone_process(tmp_path: Path) -> None:
    proc, ready = _standalone(tmp_path, "--running-seconds", "0.3")
    base = ["kubectl", "--cache-dir", str(tmp_path / "cache"), "--request-timeout", "20s"]

    def kubectl(*args: str) -> str:
        out = subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    try:
        server = ["--server", ready["url"], "--insecure-skip-tls-verify", "--token"]
        listing = kubectl(*server, "vmmove-fake-kube-token", "get", "vmis")
        assert "web-1" in listing
        assert "node-a" in listing
        assert "PHASE" in listing
        kc = ["--kubeconfig", ready["kubeconfig"]]  # the CA in it is verified
        manifest = tmp_path / "mig.json"
        manifest.write_text(json.dumps({**migration("web-1"), "metadata": {"name": "mig-1"}}))
        kubectl(*kc, "create", "--validate=false", "-f", str(manifest))
        kubectl(
            *kc, "wait", "--for=jsonpath={.status.phase}=Succeeded", "vmim/mig-1", "--timeout=30s"
        )
        node = kubectl(*kc, "get", "vmi", "web-1", "-o", "jsonpath={.status.nodeName}")
        assert node == "node-b"
        kubectl(*kc, "delete", "vmim", "mig-1")
        nodes = kubectl(*kc, "get", "nodes", "-o", "name")
        assert nodes.split() == ["node/node-a", "node/node-b", "node/node-c"]
    finally:
        _stop(proc)


def test_an_unschedulable_target_fails_the_migration_after_the_timeout(
    make_kube: Any, tmp_path: Path
) -> None:
    kube: FakeKube = make_kube(timing=MigrationTiming(unschedulable_timeout=0.3))
    api = config.new_client_from_config(
        str(kube.kubeconfig(tmp_path / "kc")), context="fake", persist_config=False
    )
    try:
        co = client.CustomObjectsApi(api)
        body = migration("db-1", addedNodeSelector={"kubernetes.io/hostname": "node-c"})
        name = co.create_namespaced_custom_object(*KV, VMIMS, body)["metadata"]["name"]

        def phases() -> list[str]:
            obj = kube.get("VirtualMachineInstanceMigration", name) or {}
            stamps = (obj.get("status") or {}).get("phaseTransitionTimestamps") or []
            return [s["phase"] for s in stamps]

        assert kube.wait_for(lambda: phases()[-1:] == ["Failed"], 10)
        assert phases() == ["Pending", "Scheduling", "Failed"]  # node-c is cordoned
        assert kube.vmi_node("db-1") == "node-a"
    finally:
        api.close()


def test_old_kubevirt_prunes_added_node_selector(make_kube: Any, tmp_path: Path) -> None:
    kube: FakeKube = make_kube(added_node_selector=False)
    api = config.new_client_from_config(
        str(kube.kubeconfig(tmp_path / "kc")), context="fake", persist_config=False
    )
    try:
        co = client.CustomObjectsApi(api)
        body = migration("db-1", addedNodeSelector={"kubernetes.io/hostname": "node-b"})
        created = co.create_namespaced_custom_object(*KV, VMIMS, body)
        assert "addedNodeSelector" not in created["spec"]  # unknown to this CRD's schema
        kv = co.list_cluster_custom_object("kubevirt.io", "v1", "kubevirts")["items"][0]
        assert kv["status"]["observedKubeVirtVersion"] == "v1.5.2"
    finally:
        api.close()


# ---- platform variants (vmmove_kubevirt.testing.controller's module docstring) ----------------


@pytest.fixture
def custom(make_kube: Any, tmp_path: Path) -> Iterator[Any]:
    """``custom(**FakeKube options)``: (kube, CustomObjectsApi) on a fresh fake cluster."""
    clients: list[Any] = []

    def _make(**options: Any) -> tuple[FakeKube, Any]:
        kube: FakeKube = make_kube(**options)
        path = kube.kubeconfig(tmp_path / f"kc{len(clients)}")
        api_client = config.new_client_from_config(str(path), context="fake", persist_config=False)
        clients.append(api_client)
        return kube, client.CustomObjectsApi(api_client)

    yield _make
    for api_client in clients:
        api_client.close()


def vmi_state(kube: FakeKube, vmi: str) -> dict[str, Any]:
    return dict(
        ((kube.get("VirtualMachineInstance", vmi) or {})["status"]).get("migrationState") or {}
    )


def vmim_status(kube: FakeKube, name: str) -> dict[str, Any]:
    return dict((kube.get("VirtualMachineInstanceMigration", name) or {}).get("status") or {})


@pytest.mark.parametrize(("release", "completed"), [("1.5", True), ("1.7", False), ("1.9", True)])
def test_release_shapes_of_a_failed_migration(custom: Any, release: str, completed: bool) -> None:
    timing = MigrationTiming(running=30.0, report_lag=0.3)
    kube, co = custom(release=release, timing=timing)
    kv = co.list_cluster_custom_object("kubevirt.io", "v1", "kubevirts")["items"][0]
    assert kv["status"]["observedKubeVirtVersion"].startswith(f"v{release}.")
    kube.fail_migration("Running", vmi="db-1", reason="stalled", after=0.1)
    name = co.create_namespaced_custom_object(*KV, VMIMS, migration("db-1"))["metadata"]["name"]
    # The VMI says it failed first; the VMIM follows report_lag later.
    assert kube.wait_for(lambda: vmi_state(kube, "db-1").get("failed") is True, 10)
    assert vmim_status(kube, name)["phase"] == "Running"
    state = vmi_state(kube, "db-1")
    assert bool(state.get("completed")) is completed
    assert state["targetNode"] == "node-b"
    assert kube.wait_for(lambda: vmim_status(kube, name).get("phase") == "Failed", 10)
    assert kube.vmi_node("db-1") == "node-a"


def test_the_previous_state_stays_until_the_handoff(custom: Any) -> None:
    timing = MigrationTiming(running=0.1)
    kube, co = custom(timing=timing, handoff_phase="TargetReady")
    first = co.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"))
    assert kube.wait_for(
        lambda: vmim_status(kube, first["metadata"]["name"]).get("phase") == "Succeeded", 10
    )
    old = vmi_state(kube, "web-1")
    assert (old["completed"], old["targetNode"]) == (True, "node-b")
    timing.preparing_target = 30.0  # the second one stays before the handoff
    second = co.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"))
    name = second["metadata"]["name"]
    assert kube.wait_for(lambda: vmim_status(kube, name).get("phase") == "PreparingTarget", 10)
    assert vmi_state(kube, "web-1") == old  # not handed over yet: the first one's state


def test_inserted_phases_appear_in_order(custom: Any) -> None:
    kube, co = custom(
        timing=MigrationTiming(running=0.1), inserted_phases={"Synchronizing": "Pending"}
    )
    name = co.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"))["metadata"]["name"]
    assert kube.wait_for(lambda: vmim_status(kube, name).get("phase") == "Succeeded", 10)
    stamps = [s["phase"] for s in vmim_status(kube, name)["phaseTransitionTimestamps"]]
    assert stamps[:2] == ["Synchronizing", "Pending"]
    assert stamps[-1] == "Succeeded"


def test_admission_denials_have_kubevirts_shapes(custom: Any) -> None:
    _kube, co = custom(timing=MigrationTiming(running=30.0))
    co.create_namespaced_custom_object(*KV, VMIMS, migration("db-1"))
    with pytest.raises(client.ApiException) as info:
        co.create_namespaced_custom_object(*KV, VMIMS, migration("db-1"))
    body = status_of(info.value)
    assert (info.value.status, body["code"]) == (400, 400)
    assert "reason" not in body  # ToAdmissionResponseError sets none
    assert body["message"].startswith('admission webhook "migration-create-validator')
    with pytest.raises(client.ApiException) as info:
        co.create_namespaced_custom_object(*KV, VMIMS, {**migration("db-1"), "spec": {}})
    assert info.value.status == 422
    assert status_of(info.value)["reason"] == "Invalid"
    _kube2, co2 = custom(wrap_denials=True, live_migration_gate=False)
    with pytest.raises(client.ApiException) as info:
        co2.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"))
    assert info.value.status == 403
    message = status_of(info.value)["message"]
    assert " is forbidden: admission webhook" in message
    assert "LiveMigration feature gate is not enabled" in message


def test_racing_creates_can_both_be_admitted(custom: Any) -> None:
    kube, co = custom(timing=MigrationTiming(running=0.2), admission_window=5.0)
    a = co.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"))["metadata"]["name"]
    b = co.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"))["metadata"]["name"]
    # KubeVirt runs both, one after the other: the VM moves twice.
    assert kube.wait_for(lambda: vmim_status(kube, b).get("phase") == "Succeeded", 10)
    assert vmim_status(kube, a)["phase"] == "Succeeded"
    assert kube.vmi_node("web-1") == "node-a"  # there and back


def test_no_migration_policy_api(custom: Any) -> None:
    kube, co = custom(migration_policy_api=False)
    with pytest.raises(client.ApiException) as info:
        co.list_cluster_custom_object("migrations.kubevirt.io", "v1alpha1", "migrationpolicies")
    assert info.value.status == 404
    name = co.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"))["metadata"]["name"]
    assert kube.wait_for(lambda: vmim_status(kube, name).get("phase") == "Succeeded", 10)


def test_a_create_applied_after_the_client_gave_up(custom: Any) -> None:
    kube, co = custom()
    kube.api_fault(method="POST", path=f"{VMIMS}$", delay=0.6, apply_after=0.3)
    with pytest.raises(urllib3.exceptions.HTTPError):
        co.create_namespaced_custom_object(*KV, VMIMS, migration("web-1"), _request_timeout=0.3)
    assert kube.list("VirtualMachineInstanceMigration") == []
    assert kube.wait_for(lambda: len(kube.list("VirtualMachineInstanceMigration")) == 1, 5)


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_an_outage_refuses_or_resets_connections_then_ends(custom: Any, mode: str) -> None:
    kube, co = custom()
    port = kube.server.port
    outage = kube.outage(0.6, mode)
    with pytest.raises(urllib3.exceptions.HTTPError):
        co.list_namespaced_custom_object(*KV, VMIS, _request_timeout=1)
    assert outage.wait(5)
    assert kube.server.port == port
    assert len(co.list_namespaced_custom_object(*KV, VMIS)["items"]) == 4


def test_the_pytest_plugin_comes_with_the_distribution(
    fake_kube: FakeKube, fake_kubeconfig: Path, pytestconfig: pytest.Config
) -> None:
    # No -p anywhere: the pytest11 entry point of vmmove-kubevirt loaded it.
    assert pytestconfig.pluginmanager.has_plugin("vmmove_kubevirt.testing.pytest_plugin")
    assert fake_kube.get("VirtualMachine", "web-1") is not None
    assert json.loads(fake_kubeconfig.read_text())["current-context"] == "fake"
