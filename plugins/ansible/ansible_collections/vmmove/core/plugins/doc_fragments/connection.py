"""The connection options every vmmove.core module documents."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The estate to connect to, for example C(qemu+tcp://kvm1/system) or C(sim://).
      - Defaults to C($VMMOVE_URI), then the built-in simulator C(sim://).
    type: str
  password:
    description:
      - The credential, given to the backend's secret option. Never logged or returned.
    type: str
  options:
    description:
      - Backend options, as in the C([options]) table of vmmove's config file
        (for the simulator, C(inventory) names an estate file).
    type: dict
    default: {}
requirements:
  - vmmove-ansible (brings vmmove) on the managed node, and the backend's plugin
"""
