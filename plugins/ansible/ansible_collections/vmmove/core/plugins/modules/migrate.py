"""Move one VM to another host through vmmove (idempotent)."""

DOCUMENTATION = r"""
module: migrate
short_description: Move a virtual machine to another host
description:
  - Live or cold migration of one VM through vmmove, on any hypervisor it has a plugin for.
  - Idempotent. A VM that already runs on O(to) reports C(changed=false).
  - In check mode only the pre-checks run (vmmove's and the platform's); nothing moves.
version_added: 0.1.0
author: vmmove developers
extends_documentation_fragment: vmmove.core.connection
options:
  vm:
    description: The VM, by id or name.
    type: str
    required: true
  to:
    description: The target host. Without it placement chooses one.
    type: str
  mode:
    description: Live, cold, or auto (live if running, cold if stopped).
    type: str
    choices: [auto, live, cold]
    default: auto
  policy:
    description: The convergence policy (a preset name such as C(balanced) or C(cold-fallback)).
    type: str
    default: balanced
  max_downtime:
    description: Cap on the switch-over pause, in milliseconds.
    type: int
  bandwidth:
    description: Pre-copy rate limit, in MiB/s.
    type: int
  allow_postcopy:
    description:
      - C(true) lets the policy switch to post-copy where pre-copy will not converge
        (the default C(balanced) policy's choice); C(false) forbids post-copy.
      - Unset leaves the policy's own steps.
    type: bool
  max_slowdown:
    description:
      - The most the platform may throttle the guest's vCPUs to make it converge, in percent
        (1 to 99). Past it the live attempt ends - as a cold move where the policy has a
        cold-fallback step, else as a failure with the VM on its source.
    type: int
  wait_timeout:
    description: Seconds to wait for the end; the migration goes on after a timeout.
    type: float
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Move web-1 to host-b
  vmmove.core.migrate:
    uri: qemu+tcp://kvm1/system
    password: "{{ vault_libvirt_password }}"
    vm: web-1
    to: host-b
    max_downtime: 500
"""

RETURN = r"""
vm_host:
  description: Where the VM runs now (in check mode, where it runs before the move).
  returned: always
  type: str
record:
  description: The migration record (phase, hosts, figures, policy steps, warnings).
  returned: when a migration ran
  type: dict
problems:
  description: Pre-check findings (warnings in check mode; the errors on a refusal).
  returned: in check mode, and on a refusal
  type: list
  elements: dict
prediction:
  description:
    - What the live move would cost (vmmove.predict) - total_time (s), downtime_ms, data,
      converges, postcopy, the policy steps predicted to fire, and the basis it assumed.
  returned: in check mode, for a live move of a running VM
  type: dict
error_type:
  description: The vmmove error on failure, for example C(PrecheckFailed) or C(MigrationFailed).
  returned: on failure
  type: str
"""

# Ansible's layout: the documentation first, then the imports.
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

IMPORT_ERROR: ImportError | None = None
try:
    from vmmove_ansible import migrate
    from vmmove_ansible.common import ModuleFailure
except ImportError as exc:  # the managed node lacks vmmove-ansible: say so, not a traceback
    IMPORT_ERROR = exc


def main() -> None:
    spec: dict[str, Any] = migrate.ARGS if IMPORT_ERROR is None else {}
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("vmmove-ansible"), exception=str(IMPORT_ERROR))
    try:
        result = migrate.run(module.params, check_mode=module.check_mode)
    except ModuleFailure as failure:
        module.fail_json(msg=str(failure), **failure.facts)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
