"""What the ``vmmove.core`` Ansible modules do, typed and testable without Ansible.

The modules under ``ansible_collections/vmmove/core/plugins/modules`` keep to Ansible's
conventions (DOCUMENTATION, the argument spec, ``AnsibleModule``) and hand their
parameters here: :mod:`~vmmove_ansible.migrate`, :mod:`~vmmove_ansible.evacuate`,
:mod:`~vmmove_ansible.info`, with the connection and error mapping in
:mod:`~vmmove_ansible.common`. A function returns the module's result, or raises
:class:`~vmmove_ansible.common.ModuleFailure` whose facts go to ``fail_json``.
"""
