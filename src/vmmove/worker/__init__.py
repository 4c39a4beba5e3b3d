"""Several vmmove workers sharing one estate through a PostgreSQL journal: a queue of moves
(:mod:`~vmmove.worker.queue`), leases and take-over (:mod:`~vmmove.worker.worker`), the
lease-aware supervisor (:mod:`~vmmove.worker.supervisor`). See ``docs/workers.md``.

Needs ``vmmove[postgres]``; nothing here is imported by ``import vmmove``."""

from vmmove.worker.worker import Worker

__all__ = ["Worker"]
