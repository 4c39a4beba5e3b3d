"""vmmove policies as KubeVirt ``MigrationPolicy`` objects.

KubeVirt tunes a migration only through configuration read when it starts: the cluster
defaults, overridden by the ``MigrationPolicy`` (``migrations.kubevirt.io/v1alpha1``,
cluster-scoped) that selects the VMI. vmmove writes one policy per distinct setting
(``vmmove-<hash>``), selecting VMIs by the label :data:`POLICY_LABEL`, which it puts on the
VMI just before the migration starts and takes off when it ends.

What a vmmove step would have done while watching the transfer, the cluster now does on
its own terms: :func:`plan` says which, in words that go into the record as warnings.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from vmmove.backend import Capabilities
from vmmove.model import GiB, MigrationSpec
from vmmove.policy import (
    AtIteration,
    AutoConverge,
    DirtyRateAbove,
    Policy,
    PostCopy,
    SetBandwidth,
    SetDowntime,
    Stalled,
)

__all__ = [
    "CLUSTER_DEFAULTS",
    "POLICY_GROUP",
    "POLICY_LABEL",
    "PolicyPlan",
    "cluster_default_notes",
    "plan",
]

POLICY_GROUP = "migrations.kubevirt.io"
POLICY_VERSION = "v1alpha1"
POLICY_PLURAL = "migrationpolicies"
#: The VMI label a vmmove MigrationPolicy selects on; its value is the policy's name.
POLICY_LABEL = "migrations.vmmove.io/policy"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vmmove"}
#: KubeVirt's documented ``spec.configuration.migrations`` defaults.
CLUSTER_DEFAULTS: dict[str, Any] = {
    "allowAutoConverge": False,
    "allowPostCopy": False,
    "bandwidthPerMigration": "0Mi",
    "completionTimeoutPerGiB": 150,
    "progressTimeout": 150,
}


@dataclass(frozen=True, kw_only=True)
class PolicyPlan:
    """The MigrationPolicy a migration needs, and what the cluster will do on its own."""

    name: str
    settings: dict[str, Any]
    notes: tuple[str, ...] = field(default=())

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{POLICY_GROUP}/{POLICY_VERSION}",
            "kind": "MigrationPolicy",
            "metadata": {"name": self.name, "labels": dict(MANAGED_BY)},
            "spec": {
                **self.settings,
                "selectors": {"virtualMachineInstanceSelector": {POLICY_LABEL: self.name}},
            },
        }


def _never(trigger: object) -> str | None:
    if isinstance(trigger, AtIteration):
        return "KubeVirt reports no pre-copy passes"
    if isinstance(trigger, Stalled):
        return "KubeVirt reports no remaining bytes to see a stall in"
    if isinstance(trigger, DirtyRateAbove):
        return "KubeVirt reports no dirty rate"
    return None


def plan(policy: Policy, spec: MigrationSpec, memory: int, caps: Capabilities) -> PolicyPlan:
    """The MigrationPolicy settings for ``policy`` and ``spec``, and notes on every step."""
    per_gib = spec.completion_budget_per_gib or policy.completion_budget_per_gib
    settings: dict[str, Any] = {}
    notes: list[str] = []
    postcopy = caps.postcopy and any(isinstance(s.action, PostCopy) for s in policy.steps)
    converge = caps.auto_converge and any(isinstance(s.action, AutoConverge) for s in policy.steps)
    # KubeVirt switches to post-copy when completionTimeoutPerGiB runs out: put that at half
    # of vmmove's budget so post-copy starts well before vmmove would abort.
    timeout = max(1, math.ceil(per_gib / 2 if postcopy else per_gib))
    settings["completionTimeoutPerGiB"] = timeout
    gib = max(memory / GiB, 1 / 1024)
    if postcopy:
        settings["allowPostCopy"] = True
    if converge:
        settings["allowAutoConverge"] = True
    if spec.bandwidth is not None and caps.bandwidth:
        settings["bandwidthPerMigration"] = f"{spec.bandwidth}Mi"
    for step in policy.steps:
        action, trigger = step.action, step.trigger
        never = _never(trigger)
        if isinstance(action, PostCopy) and postcopy:
            notes.append(
                f"cluster, not vmmove: '{step}' becomes allowPostCopy; KubeVirt switches to "
                f"post-copy when completionTimeoutPerGiB ({timeout} s/GiB, about "
                f"{timeout * gib:.0f} s for this VM) runs out"
            )
        elif isinstance(action, AutoConverge) and converge:
            notes.append(
                f"cluster, not vmmove: '{step}' becomes allowAutoConverge; QEMU may throttle "
                "the guest from the start of the transfer"
            )
        elif isinstance(action, SetDowntime):
            notes.append(
                f"'{step}' is skipped: KubeVirt has no per-migration downtime limit to raise"
            )
        elif isinstance(action, SetBandwidth):
            notes.append(
                f"'{step}' is skipped: KubeVirt sets bandwidth once, when the migration starts "
                "(MigrationPolicy bandwidthPerMigration)"
            )
        elif never is not None:
            notes.append(f"'{step}' never fires: {never}")
    notes.append(
        f"cluster, not vmmove: KubeVirt aborts the migration after completionTimeoutPerGiB "
        f"({timeout} s/GiB){' unless it is in post-copy' if postcopy else ''}, and after "
        "progressTimeout (cluster setting, 150 s by default) without progress; vmmove sees "
        "no bytes, so its own stall timeout never fires"
    )
    if "bandwidthPerMigration" in settings:
        notes.append(
            f"cluster, not vmmove: bandwidth is capped at {spec.bandwidth} MiB/s "
            "(bandwidthPerMigration) for the whole migration"
        )
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return PolicyPlan(name=f"vmmove-{digest}", settings=settings, notes=tuple(notes))


def cluster_default_notes(
    policy: Policy, config: dict[str, Any] | None, why: str
) -> tuple[str, ...]:
    """What the cluster, not vmmove, decides when no MigrationPolicy can be written
    (``why``): every policy step, judged against the cluster's ``migrations`` ``config``
    (``None``: it could not be read, KubeVirt's documented defaults are assumed)."""
    cfg = {**CLUSTER_DEFAULTS, **(config or {})}
    source = "the KubeVirt CR" if config is not None else "KubeVirt's defaults (CR unreadable)"
    notes = [
        f"cluster, not vmmove: {why}; the cluster's migration settings apply ({source}: "
        f"allowPostCopy={cfg['allowPostCopy']}, allowAutoConverge={cfg['allowAutoConverge']}, "
        f"bandwidthPerMigration={cfg['bandwidthPerMigration']}, completionTimeoutPerGiB="
        f"{cfg['completionTimeoutPerGiB']} s, progressTimeout={cfg['progressTimeout']} s)"
    ]
    for step in policy.steps:
        action, never = step.action, _never(step.trigger)
        if isinstance(action, PostCopy):
            allowed = bool(cfg["allowPostCopy"])
            notes.append(
                f"cluster, not vmmove: '{step}' is the cluster's call: post-copy "
                + (
                    "is allowed and starts when completionTimeoutPerGiB runs out"
                    if allowed
                    else "is not allowed (allowPostCopy=false): it never happens"
                )
            )
        elif isinstance(action, AutoConverge):
            notes.append(
                f"cluster, not vmmove: '{step}' is the cluster's call: auto-converge is "
                + ("on from the start" if cfg["allowAutoConverge"] else "off")
            )
        elif isinstance(action, SetDowntime | SetBandwidth):
            notes.append(f"'{step}' is skipped: KubeVirt cannot change a running migration")
        elif never is not None:
            notes.append(f"'{step}' never fires: {never}")
    notes.append(
        "cluster, not vmmove: KubeVirt aborts the migration after completionTimeoutPerGiB "
        f"({cfg['completionTimeoutPerGiB']} s/GiB) and after progressTimeout "
        f"({cfg['progressTimeout']} s) without progress"
    )
    return tuple(notes)
