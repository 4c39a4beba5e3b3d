"""Connecting: kubeconfig contexts, namespaces, the pod's service account, and finding out
whether migrations can name their target node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.config import incluster_config

import vmmove
from vmmove_kubevirt import kube as kube_module
from vmmove_kubevirt.testing import FakeKube


def test_the_current_context_and_its_namespace(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = kube.kubeconfig(tmp_path / "kubeconfig", context="lab/one", namespace="default")
    monkeypatch.setenv("KUBECONFIG", str(path))
    with vmmove.connect("kubevirt://") as conn:
        assert conn.backend.context == "lab/one"  # type: ignore[attr-defined]
        assert conn.backend.namespace == "default"  # type: ignore[attr-defined]
        assert {h.cluster for h in conn.hosts()} == {"lab/one"}
    with vmmove.connect("kubevirt://lab%2Fone/default") as conn:  # a '/' in a context name
        assert conn.vm("web-1").host == "node-a"


def test_another_namespace_sees_its_own_vms(kube: FakeKube, connect: Any) -> None:
    kube.store.create(
        kube.controller.rt_ns, None, {"metadata": {"name": "team-b"}, "status": {"phase": "Active"}}
    )
    kube.add_vm("b-1", node="node-b", namespace="team-b")
    conn = connect(kube, "kubevirt://fake/team-b")
    assert [v.name for v in conn.vms()] == ["b-1"]
    with pytest.raises(vmmove.NotFound):
        conn.vm("web-1")
    record = conn.migrate("b-1", to="node-a").wait(30)
    assert record.vm_host == "node-a" == kube.vmi_node("b-1", namespace="team-b")


def test_in_a_pod_the_service_account_is_used(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(kube.token or "")
    (sa / "ca.crt").write_text(kube.server.ca_pem or "")
    (sa / "namespace").write_text("default")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setattr(kube_module, "SA_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.server.port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    with vmmove.connect("kubevirt://") as conn:
        assert conn.backend.context == "in-cluster"  # type: ignore[attr-defined]
        assert conn.backend.namespace == "default"  # type: ignore[attr-defined]
        assert conn.vm("web-1").host == "node-a"


def test_added_node_selector_support_from_the_kubevirt_version(
    kube: FakeKube, connect: Any
) -> None:
    # The CRD cannot be read: the KubeVirt CR's observedKubeVirtVersion (v1.9.0) says yes.
    kube.api_fault(path="customresourcedefinitions", status=403, times=None)
    conn = connect(kube)
    assert conn.capabilities.choose_target is True
    assert "v1.9.0" in conn.backend.node_selector_why
    # Neither can be read: assume no, and say why.
    kube.api_fault(path="kubevirts$", status=403, times=None)
    conn = connect(kube)
    assert conn.capabilities.choose_target is False
    assert "cannot tell" in conn.backend.node_selector_why


def test_the_fake_writes_a_kubeconfig_kubectl_and_the_client_read(
    kube: FakeKube, tmp_path: Path
) -> None:
    path = kube.kubeconfig(tmp_path / "kc", context="x", namespace="ns1")
    data = json.loads(path.read_text())
    assert path.stat().st_mode & 0o077 == 0  # the token is in it: owner only
    assert data["current-context"] == "x"
    assert data["contexts"][0]["context"]["namespace"] == "ns1"
    assert data["clusters"][0]["cluster"]["server"] == kube.url
    assert data["users"][0]["user"]["token"] == kube.token


def test_a_token_option_replaces_the_configured_credentials(kube: FakeKube, tmp_path: Path) -> None:
    path = str(kube.kubeconfig(tmp_path / "kubeconfig", token="stale"))
    secret = vmmove.Secret(kube.token or "")
    with vmmove.connect("kubevirt://fake/default", kubeconfig=path, token=secret) as conn:
        assert conn.vm("web-1").host == "node-a"
    # Plain text works too: the core hands it over as a Secret.
    with vmmove.connect("kubevirt://fake/default", kubeconfig=path, token=kube.token) as conn:
        assert conn.vm("web-1").host == "node-a"
    # The CLI passes $VMMOVE_PASSWORD or --ask-password as the one declared secret, token.
    from vmmove.cli import _secret_option

    assert _secret_option("kubevirt://fake/default") == "token"
    with pytest.raises(vmmove.AuthenticationFailed):
        vmmove.connect("kubevirt://fake/default", kubeconfig=path)
    with pytest.raises(vmmove.InvalidInput, match="cannot be given in the URI") as info:
        vmmove.connect(f"kubevirt://fake/default?token={kube.token}", kubeconfig=path)
    assert str(kube.token) not in str(info.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_context_that_skips_tls_checks_needs_insecure(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """insecure-skip-tls-verify in a kubeconfig is refused until insecure=True says it is
    meant; then the connection works and warns."""
    config = kube.kubeconfig_dict(context="lab")
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = True
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(vmmove.InvalidInput, match="insecure=True"):
        vmmove.connect("kubevirt://")
    with (
        pytest.warns(vmmove.InsecureConnectionWarning, match="verification is OFF"),
        vmmove.connect("kubevirt://", insecure=True) as conn,
    ):
        assert conn.vm("web-1").host == "node-a"


def test_tls_is_verified_by_default(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kubeconfig that trusts no CA for the fake server's certificate: refused."""
    config = kube.kubeconfig_dict(context="lab")
    del config["clusters"][0]["cluster"]["certificate-authority-data"]
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(vmmove.ConnectionFailed, match=r"(?i)certificate"):
        vmmove.connect("kubevirt://")
