"""The commands, one module per family; :data:`COMMANDS` lists them for the group."""

from __future__ import annotations

from vmmove.cli.commands.demo import demo
from vmmove.cli.commands.fleet import consolidate, evacuate, rebalance
from vmmove.cli.commands.inventory import backends, check, hosts, vms
from vmmove.cli.commands.metrics import metrics
from vmmove.cli.commands.migrations import attach, cancel, history, migrate, show
from vmmove.cli.commands.worker import watch, worker

COMMANDS = (
    backends,
    hosts,
    vms,
    check,
    migrate,
    cancel,
    history,
    show,
    attach,
    evacuate,
    rebalance,
    consolidate,
    demo,
    metrics,
    worker,
    watch,
)
