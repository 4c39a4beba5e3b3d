"""Empty a host through vmmove's fleet planner and bounded executor."""

DOCUMENTATION = r"""
module: evacuate
short_description: Move every VM off a host
description:
  - Plans where each VM of O(host) goes (placement, capacity, affinity), then runs the plan
    with bounded concurrency per source, target and cluster.
  - In check mode the plan is returned and nothing moves.
  - A host with nothing left to move reports C(changed=false).
  - Fails, with the report, when a VM could not leave the host.
version_added: 0.1.0
author: vmmove developers
extends_documentation_fragment: vmmove.core.connection
options:
  host:
    description: The host to empty, by id or name.
    type: str
    required: true
  policy:
    description: The convergence policy for every move.
    type: str
    default: balanced
  max_downtime:
    description: Cap on each move's switch-over pause, in milliseconds.
    type: int
  headroom:
    description: Share of each target's memory to keep free (0.1 is 10 %).
    type: float
    default: 0.0
  per_source:
    description: Moves out of one host at once.
    type: int
    default: 2
  per_target:
    description: Moves into one host at once.
    type: int
    default: 2
  per_cluster:
    description: Moves touching one cluster at once.
    type: int
    default: 5
  total:
    description: Moves at once, in all.
    type: int
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Plan the evacuation of kvm7 (check mode shows the plan)
  vmmove.core.evacuate:
    host: kvm7
  check_mode: true
  register: plan

- name: Empty kvm7 for maintenance
  vmmove.core.evacuate:
    host: kvm7
    max_downtime: 1000
    per_source: 2
"""

RETURN = r"""
plan:
  description: The plan (moves with reasons and predicted costs, VMs that cannot move).
  returned: always
  type: dict
report:
  description: What the run did (an outcome per VM, each migration attempted).
  returned: when the plan ran
  type: dict
"""

# Ansible's layout: the documentation first, then the imports.
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

IMPORT_ERROR: ImportError | None = None
try:
    from vmmove_ansible import evacuate
    from vmmove_ansible.common import ModuleFailure
except ImportError as exc:  # the managed node lacks vmmove-ansible: say so, not a traceback
    IMPORT_ERROR = exc


def main() -> None:
    spec: dict[str, Any] = evacuate.ARGS if IMPORT_ERROR is None else {}
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("vmmove-ansible"), exception=str(IMPORT_ERROR))
    try:
        result = evacuate.run(module.params, check_mode=module.check_mode)
    except ModuleFailure as failure:
        module.fail_json(msg=str(failure), **failure.facts)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
