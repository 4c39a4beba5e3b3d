"""Test kit for vmmove backends: the contract suite and helpers for plugin authors.

- :mod:`vmmove.testing.contract`: :class:`~vmmove.testing.contract.BackendContract`, the
  tests every backend must pass, and :class:`~vmmove.testing.contract.ContractSetup`.
- :mod:`vmmove.testing.docs`: :func:`~vmmove.testing.docs.marked_block`, to check that a
  generated table on a docs page (the options table) is what the code declares.
- :mod:`vmmove.testing.plugin`: the pytest plugin (loaded automatically where vmmove is
  installed) with ready-made fixtures such as ``vmmove_sim``.
"""
