"""The engine: one supervisor loop drives every migration of a connection.

Each migration is a small state machine (:class:`~vmmove.engine.run.MigrationRun`) that the
supervisor advances whenever it is due: run the pre-checks, reserve, start the backend job,
then poll it, apply the policy, enforce the budgets, and close the record. There is no
thread per migration: on a real clock one supervisor thread sleeps until the next poll is
due; on a virtual clock the callers who wait drive the loop and time jumps to the next due
poll.

Guarantees, whatever the backend does:
- every transition is checked against :mod:`vmmove.machine` and saved before it is acted on;
- before the commit point a failure or cancel leaves the VM on its source, and a terminal
  record names where the VM runs, read from the platform's inventory;
- progress never goes backwards, and reads 100 only once the migration completed.

The package, one concept a module:

==============  ===========================================================================
connection      :class:`Connection`: inventory, ``migrate``, ``check``, ``attach``
handle          :class:`Migration`: the caller's handle on one migration
run             :class:`MigrationRun`: one migration's record, progress and state machine
convergence     the policy's steps, budgets and stall timeout; the post-commit watchdog
outcome         ending truly: the job's report against the inventory, through the machine
ending          an ending before the inventory confirmed it
precheck        every pre-check; the target when none was named
ledger          slots, claims and in-flight counts of a connection
supervisor      the one loop that advances every run
eventlog        the bounded event log readers follow
==============  ===========================================================================
"""

from vmmove.engine.connection import Connection
from vmmove.engine.handle import Migration
from vmmove.engine.run import PLATFORM_DECIDES

__all__ = ["PLATFORM_DECIDES", "Connection", "Migration"]
