"""``FakeKube``: the API server, the object store and the KubeVirt controller, wired up,
with helpers to build an estate and a kubeconfig that points at it."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmmove_kubevirt.testing.controller import (
    DEFAULT_RELEASE,
    NODE_LABEL,
    NOT_MIGRATABLE_MESSAGE,
    NOT_MIGRATABLE_REASON,
    RELEASES,
    KubeVirtController,
    MigrationFault,
    MigrationTiming,
    vmi_status,
)
from vmmove_kubevirt.testing.server import ApiFault, KubeApiServer, Outage
from vmmove_kubevirt.testing.store import Obj, ObjectStore

__all__ = ["DEFAULT_TOKEN", "FakeKube"]

#: The bearer token a FakeKube accepts unless told otherwise (a test value, not a secret).
DEFAULT_TOKEN = "vmmove-fake-kube-token"  # noqa: S105


class FakeKube:
    """A fake Kubernetes cluster with KubeVirt, on ``https://127.0.0.1:<port>``.

    >>> with FakeKube() as kube:                       # doctest: +SKIP
    ...     kube.add_node("node-a"); kube.add_node("node-b")
    ...     kube.add_vm("web-1", node="node-a")
    ...     path = kube.kubeconfig(tmp_path / "kubeconfig")

    ``timing`` sets how long each migration phase lasts. ``release`` (``"1.5"`` to
    ``"1.9"``, default the newest) picks how KubeVirt behaves; every other keyword is one
    variant switch of :class:`~vmmove_kubevirt.testing.KubeVirtController` (its module
    docstring lists them): ``added_node_selector=False`` imitates a KubeVirt older than 1.6
    (``spec.addedNodeSelector`` is pruned), ``completed_on_failure``, ``handoff_phase``,
    ``inserted_phases``, ``migration_policy_api``, ``admission_window``, ``wrap_denials``,
    ``live_migration_gate``, ``ignore_added_node_selector``. :meth:`outage` makes the API
    unreachable for a while; :meth:`api_fault` injects faults into single requests.
    """

    def __init__(
        self,
        *,
        token: str | None = DEFAULT_TOKEN,
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        timing: MigrationTiming | None = None,
        release: str = DEFAULT_RELEASE,
        added_node_selector: bool | None = None,
        kubevirt_version: str | None = None,
        completed_on_failure: bool | None = None,
        handoff_phase: str = "Scheduled",
        inserted_phases: Mapping[str, str] | None = None,
        migration_policy_api: bool = True,
        admission_window: float = 0.0,
        wrap_denials: bool = False,
        live_migration_gate: bool = True,
        ignore_added_node_selector: bool = False,
        migrations: Mapping[str, Any] | None = None,
        history: int = 2000,
        namespace: str = "default",
    ) -> None:
        self.namespace = namespace
        self.store = ObjectStore(history=history)
        if kubevirt_version is None and added_node_selector is False and release == "1.9":
            # Only the schema was asked to be old: say so in the version too.
            kubevirt_version = RELEASES["1.5"].version
        self.controller = KubeVirtController(
            self.store,
            timing=timing,
            release=release,
            added_node_selector=added_node_selector,
            kubevirt_version=kubevirt_version,
            completed_on_failure=completed_on_failure,
            handoff_phase=handoff_phase,
            inserted_phases=inserted_phases,
            migration_policy_api=migration_policy_api,
            admission_window=admission_window,
            wrap_denials=wrap_denials,
            live_migration_gate=live_migration_gate,
            ignore_added_node_selector=ignore_added_node_selector,
            migrations=migrations,
        )
        self.controller.install()
        if namespace not in ("default", "kubevirt"):
            self.store.create(
                self.controller.rt_ns,
                None,
                {
                    "metadata": {
                        "name": namespace,
                        "labels": {"kubernetes.io/metadata.name": namespace},
                    },
                    "status": {"phase": "Active"},
                },
            )
        self.server = KubeApiServer(self.store, host=host, port=port, token=token, tls=tls)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeKube:
        self.server.start()
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.server.stop()
        self.store.close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str | None:
        return self.server.token

    @property
    def timing(self) -> MigrationTiming:
        return self.controller.timing

    @property
    def release(self) -> str:
        """The KubeVirt release line imitated (``"1.9"``...)."""
        return self.controller.release.name

    # ---- kubeconfig --------------------------------------------------------------------------
    def kubeconfig_dict(
        self, *, context: str = "fake", namespace: str | None = None, token: str | None = None
    ) -> Obj:
        cluster: Obj = {"server": self.url}
        if self.server.ca_pem is not None:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.server.ca_pem.encode()
            ).decode()
        user: Obj = {}
        if token or self.token:
            user["token"] = token or self.token
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "current-context": context,
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": f"{context}-user", "user": user}],
            "contexts": [
                {
                    "name": context,
                    "context": {
                        "cluster": context,
                        "user": f"{context}-user",
                        "namespace": namespace or self.namespace,
                    },
                }
            ],
        }

    def kubeconfig(
        self,
        path: str | os.PathLike[str],
        *,
        context: str = "fake",
        namespace: str | None = None,
        token: str | None = None,
    ) -> Path:
        """Write a kubeconfig (JSON is valid YAML) for this cluster, readable by its owner only."""
        out = Path(path)
        data = json.dumps(
            self.kubeconfig_dict(context=context, namespace=namespace, token=token), indent=2
        )
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        return out

    # ---- estate --------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        *,
        cpus: int = 16,
        memory: str = "64Gi",
        cpu_model: str = "Skylake-Client-IBRS",
        cpu_vendor: str = "Intel",
        features: tuple[str, ...] = ("vmx", "ssse3", "avx2"),
        labels: Mapping[str, str] | None = None,
        unschedulable: bool = False,
        ready: bool = True,
        taints: list[Obj] | None = None,
    ) -> Obj:
        """A node with KubeVirt's node labels (schedulable, CPU model, vendor, features)."""
        node_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "kubevirt.io/schedulable": "true",
            f"cpu-model.node.kubevirt.io/{cpu_model}": "true",
            f"cpu-model-migration.node.kubevirt.io/{cpu_model}": "true",
            f"host-model-cpu.node.kubevirt.io/{cpu_model}": "true",
            f"cpu-vendor.node.kubevirt.io/{cpu_vendor}": "true",
            **{f"cpu-feature.node.kubevirt.io/{f}": "true" for f in features},
            **(labels or {}),
        }
        spec: Obj = {}
        if unschedulable:
            spec["unschedulable"] = True
            spec["taints"] = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
        if taints:
            spec.setdefault("taints", []).extend(taints)
        return self.store.create(
            self.controller.rt_node,
            None,
            {
                "metadata": {"name": name, "labels": node_labels},
                "spec": spec,
                "status": {
                    "capacity": {"cpu": str(cpus), "memory": memory, "pods": "110"},
                    "allocatable": {"cpu": str(cpus), "memory": memory, "pods": "110"},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if ready else "Unknown",
                            "reason": "KubeletReady" if ready else "NodeStatusUnknown",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ],
                    "nodeInfo": {
                        "architecture": "amd64",
                        "bootID": f"boot-{name}",
                        "containerRuntimeVersion": "containerd://1.7.0",
                        "kernelVersion": "6.1.0-vmmove",
                        "kubeProxyVersion": "v1.32.0",
                        "kubeletVersion": "v1.32.0",
                        "machineID": f"machine-{name}",
                        "operatingSystem": "linux",
                        "osImage": "vmmove fake node",
                        "systemUUID": f"uuid-{name}",
                    },
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": name},
                    ],
                },
            },
        )

    @staticmethod
    def _spec(name: str, memory: str, cpus: int, eviction: str | None, pin: str | None) -> Obj:
        spec: Obj = {
            "domain": {
                "cpu": {"cores": cpus, "sockets": 1, "threads": 1},
                "memory": {"guest": memory},
                "resources": {"requests": {"memory": memory}},
                "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]},
            },
            "volumes": [
                {"name": "rootdisk", "persistentVolumeClaim": {"claimName": f"{name}-root"}}
            ],
        }
        if eviction:
            spec["evictionStrategy"] = eviction
        if pin:
            spec["nodeSelector"] = {"kubernetes.io/hostname": pin}
        return spec

    def add_vm(
        self,
        name: str,
        *,
        node: str | None = None,
        running: bool = True,
        memory: str = "2Gi",
        cpus: int = 2,
        run_strategy: str | None = None,
        labels: Mapping[str, str] | None = None,
        eviction_strategy: str | None = "LiveMigrate",
        not_migratable: tuple[str, str] | None = None,
        pin: bool | None = None,
        namespace: str | None = None,
    ) -> Obj:
        """A VirtualMachine. Running: its VMI runs on ``node`` at once. Stopped: the VM is
        pinned to ``node`` (``nodeSelector kubernetes.io/hostname``), as a cold move leaves it.
        ``not_migratable=(reason, message)`` makes its VMI report LiveMigratable=False.
        ``run_strategy`` uses ``spec.runStrategy`` instead of ``spec.running``."""
        ns = namespace or self.namespace
        pin = (not running) if pin is None else pin
        annotations = {}
        if not_migratable:
            annotations = {
                NOT_MIGRATABLE_REASON: not_migratable[0],
                NOT_MIGRATABLE_MESSAGE: not_migratable[1],
            }
        template_labels = {"kubevirt.io/domain": name, **(labels or {})}
        spec: Obj = {
            "template": {
                "metadata": {"labels": template_labels},
                "spec": self._spec(name, memory, cpus, eviction_strategy, node if pin else None),
            }
        }
        if run_strategy is not None:
            spec["runStrategy"] = run_strategy
        else:
            spec["running"] = running
        rt_vm, rt_vmi = self.controller.rt_vm, self.controller.rt_vmi
        with self.store.cond:
            vm = self.store.create(
                rt_vm,
                ns,
                {
                    "metadata": {"name": name, "annotations": annotations},
                    "spec": spec,
                    "status": {
                        "printableStatus": "Running" if running else "Stopped",
                        "ready": running,
                        "created": running,
                    },
                },
            )
            if running:
                if node is None:
                    raise ValueError("a running VM needs a node")
                self.store.create(
                    rt_vmi,
                    ns,
                    {
                        "metadata": {
                            "name": name,
                            "labels": {**template_labels, NODE_LABEL: node},
                            "annotations": annotations,
                            "ownerReferences": [
                                {
                                    "apiVersion": "kubevirt.io/v1",
                                    "kind": "VirtualMachine",
                                    "name": name,
                                    "uid": vm["metadata"]["uid"],
                                    "controller": True,
                                    "blockOwnerDeletion": True,
                                }
                            ],
                        },
                        "spec": spec["template"]["spec"],
                        "status": vmi_status(node, annotations),
                    },
                )
        return vm

    def add_vmi(
        self,
        name: str,
        node: str,
        *,
        memory: str = "1Gi",
        cpus: int = 1,
        labels: Mapping[str, str] | None = None,
        eviction_strategy: str | None = "LiveMigrate",
        not_migratable: tuple[str, str] | None = None,
        namespace: str | None = None,
    ) -> Obj:
        """A bare VirtualMachineInstance (no VirtualMachine owns it), running on ``node``."""
        annotations = {}
        if not_migratable:
            annotations = {
                NOT_MIGRATABLE_REASON: not_migratable[0],
                NOT_MIGRATABLE_MESSAGE: not_migratable[1],
            }
        return self.store.create(
            self.controller.rt_vmi,
            namespace or self.namespace,
            {
                "metadata": {
                    "name": name,
                    "labels": {**(labels or {}), NODE_LABEL: node},
                    "annotations": annotations,
                },
                "spec": self._spec(name, memory, cpus, eviction_strategy, None),
                "status": vmi_status(node, annotations),
            },
        )

    def sample(self) -> FakeKube:
        """The sample estate: three nodes (``node-c`` cordoned) and five VMs.

        ``web-1`` and ``db-1`` run on ``node-a``; ``batch-1`` is stopped, pinned to
        ``node-a``; ``legacy-1`` is a bare VMI on ``node-b``; ``gpu-1`` runs on ``node-b``
        and cannot migrate live (LiveMigratable=False).
        """
        self.add_node("node-a")
        self.add_node("node-b")
        self.add_node("node-c", unschedulable=True)
        self.add_vm("web-1", node="node-a", memory="2Gi", cpus=2)
        self.add_vm("db-1", node="node-a", memory="4Gi", cpus=4)
        self.add_vm("batch-1", node="node-a", running=False, memory="1Gi", cpus=1)
        self.add_vmi("legacy-1", "node-b")
        self.add_vm(
            "gpu-1",
            node="node-b",
            not_migratable=(
                "HostDeviceNotLiveMigratable",
                "VMI uses a PCI host devices",
            ),
        )
        return self

    # ---- faults ----------------------------------------------------------------------------------
    def fail_migration(
        self,
        phase: str = "PreparingTarget",
        *,
        vmi: str | None = None,
        reason: str = "injected failure",
        after: float = 0.0,
        times: int = 1,
    ) -> MigrationFault:
        """Make the next migration of ``vmi`` (any when ``None``) fail in ``phase``."""
        return self.controller.inject(
            MigrationFault(phase=phase, vmi=vmi, reason=reason, after=after, times=times)
        )

    def api_fault(self, **fault: Any) -> ApiFault:
        """Inject an API fault; see :class:`~vmmove_kubevirt.testing.ApiFault` for the fields."""
        return self.server.inject(ApiFault(**fault))

    def outage(self, seconds: float, mode: str = "refuse") -> Outage:
        """The API is unreachable for ``seconds`` from now (``"refuse"``: connections
        refused; ``"reset"``: connections reset) while KubeVirt goes on; returns at once."""
        return self.server.outage(seconds, mode)

    # ---- reading the cluster ---------------------------------------------------------------------
    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """An object by kind (``"VirtualMachineInstance"``, ``"Node"``...), or ``None``."""
        rt = self.store.kind(kind)
        return self.store.find(rt, namespace or self.namespace, name)

    def list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        rt = self.store.kind(kind)
        return self.store.list(rt, namespace or (self.namespace if rt.namespaced else None))[0]

    def vmi_node(self, name: str, namespace: str | None = None) -> str | None:
        vmi = self.get("VirtualMachineInstance", name, namespace)
        return None if vmi is None else (vmi.get("status") or {}).get("nodeName")

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds, re-checking on every change to the cluster."""
        deadline = time.monotonic() + timeout
        with self.store.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.store.cond.wait(min(left, 0.1))
            return True
