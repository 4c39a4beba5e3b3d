"""``python -m vmmove.cli``: the ``vmmove`` command."""

from vmmove.cli import main

main()
