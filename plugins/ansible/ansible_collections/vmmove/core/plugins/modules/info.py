"""List the hosts and VMs of an estate through vmmove."""

DOCUMENTATION = r"""
module: info
short_description: List the hosts and virtual machines of an estate
description:
  - The hosts (capacity, allocation, state) and VMs (host, power, memory) vmmove sees.
  - Changes nothing.
version_added: 0.1.0
author: vmmove developers
extends_documentation_fragment: vmmove.core.connection
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: What runs where
  vmmove.core.info:
    uri: vsphere://admin@vc.example/DC1
    password: "{{ vault_vcenter_password }}"
  register: estate
"""

RETURN = r"""
backend:
  description: The backend that answered (its URI scheme).
  returned: always
  type: str
hosts:
  description: Every host.
  returned: always
  type: list
  elements: dict
vms:
  description: Every VM.
  returned: always
  type: list
  elements: dict
"""

# Ansible's layout: the documentation first, then the imports.
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

IMPORT_ERROR: ImportError | None = None
try:
    from vmmove_ansible import info
    from vmmove_ansible.common import ModuleFailure
except ImportError as exc:  # the managed node lacks vmmove-ansible: say so, not a traceback
    IMPORT_ERROR = exc


def main() -> None:
    spec: dict[str, Any] = info.ARGS if IMPORT_ERROR is None else {}
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    if IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("vmmove-ansible"), exception=str(IMPORT_ERROR))
    try:
        result = info.run(module.params, check_mode=module.check_mode)
    except ModuleFailure as failure:
        module.fail_json(msg=str(failure), **failure.facts)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
