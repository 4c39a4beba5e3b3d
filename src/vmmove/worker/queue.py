"""The queue of moves in PostgreSQL: submitted by anyone (``conn.submit``, ``vmmove migrate
--queue``, ``vmmove evacuate --queue``), claimed by workers.

Concurrency limits hold across all workers because they are counted in the database: a
queue item holds its slot from its claim until its record ends (the terminal save closes
it in the same statement). Claims are serialised per estate by an advisory lock, since a
limit is a count over many rows that ``SKIP LOCKED`` alone cannot guard; the rows are read
without row locks and claimed by an ``UPDATE`` that re-checks each is still queued.
Items are claimed in submission order (a fleet plan's order: longest first, link-aware),
skipping those whose source, target or cluster is full.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from psycopg import errors as pgerrors

from vmmove.errors import Conflict, InvalidInput, NotFound, PrecheckFailed
from vmmove.model import HostInfo, MigrationSpec, Problem

if TYPE_CHECKING:
    from vmmove.engine import Connection
    from vmmove.fleet import Limits, Plan
    from vmmove.journals.postgres import PgJournal

__all__ = [
    "Item",
    "cancel_item",
    "claim",
    "journal_of",
    "requeue_dead_claims",
    "submit",
    "submit_plan",
]


@dataclass(frozen=True)
class Item:
    id: str
    vm: str
    spec: dict[str, Any]  # spec_body() and the target

    def migration_spec(self) -> MigrationSpec:
        """The spec the item was submitted with; a key this version does not know (an item
        queued by a newer one) is left out, and one it lacks takes the default."""
        known = {k: v for k, v in self.spec.items() if k in _SPEC_FIELDS}
        return MigrationSpec(vm=self.vm, **known)


#: what an item's spec may set (the VM is the item's own)
_SPEC_FIELDS = frozenset(f.name for f in fields(MigrationSpec)) - {"vm"}


def spec_body(spec: MigrationSpec) -> dict[str, Any]:
    """The spec as the queue keeps it, in JSON: every field but the VM and the target (kept
    in their own columns); the policy by name, for the worker to resolve."""
    body = {f.name: getattr(spec, f.name) for f in fields(spec)}
    del body["vm"], body["target"]
    body["mode"] = spec.mode.value
    body["policy"] = spec.policy if isinstance(spec.policy, str) else spec.policy.name
    return body


def journal_of(conn: Connection) -> PgJournal:
    from vmmove.journals.postgres import PgJournal  # noqa: PLC0415

    store = conn.store
    if not isinstance(store, PgJournal):
        raise InvalidInput(
            "the queue lives in a PostgreSQL journal: connect with journal='postgresql://...' "
            "(or VMMOVE_JOURNAL)"
        )
    return store


def _limits(limits: Limits | None) -> tuple[int | None, ...]:
    if limits is None:
        return (None, None, None, None)
    return (limits.per_source, limits.per_target, limits.per_cluster, limits.total)


def _row(conn: Connection, spec: MigrationSpec, limits: Limits | None) -> tuple[Any, ...]:
    """Check a move as ``migrate`` would (bad input raises, nothing is queued)."""
    vm = conn.backend.vm(spec.vm)
    source = conn.backend.host(vm.host)
    target: HostInfo | None = None
    if spec.target is not None:
        target = conn.backend.host(spec.target)
        if target.id == vm.host:
            problem = Problem(code="same-host", message=f"{vm.name} already runs on {target.name}")
            raise PrecheckFailed(f"cannot migrate {vm.name}", [problem])
    body = spec_body(spec)
    clusters = sorted({source.cluster, target.cluster if target else source.cluster})
    item = uuid.uuid4().hex[:12]
    return (
        item,
        conn.uri,
        vm.id,
        vm.name,
        vm.host,
        None if target is None else target.id,
        clusters,
        json.dumps(body),
        *_limits(limits),
    )


_INSERT = (
    "INSERT INTO vmmove_queue (id, estate, vm, vm_name, source, target, clusters, spec, "
    "max_source, max_target, max_cluster, max_total) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def submit(conn: Connection, spec: MigrationSpec, limits: Limits | None = None) -> str:
    """Queue one move; return the queue item's id. Workers claim it."""
    journal = journal_of(conn)
    row = _row(conn, spec, limits)
    try:
        with journal.transaction() as db:
            db.execute(_INSERT, row)
            db.execute("SELECT pg_notify(%s, %s)", (journal.channel, json.dumps({"k": "queue"})))
    except pgerrors.UniqueViolation:
        raise Conflict(f"VM {row[3]} already has a move queued or running") from None
    return str(row[0])


def submit_plan(conn: Connection, plan: Plan, limits: Limits | None = None) -> list[str]:
    """Queue a fleet plan's moves in the plan's order, all or none."""
    journal = journal_of(conn)
    rows = [
        _row(conn, MigrationSpec(vm=m.vm, target=m.target, mode=m.mode), limits) for m in plan.moves
    ]
    try:
        with journal.transaction() as db:
            with db.cursor() as cur:
                cur.executemany(_INSERT, rows)
            db.execute("SELECT pg_notify(%s, %s)", (journal.channel, json.dumps({"k": "queue"})))
    except pgerrors.UniqueViolation:
        raise Conflict("a VM of the plan already has a move queued or running") from None
    return [str(r[0]) for r in rows]


def cancel_item(journal: PgJournal, item_id: str) -> str:
    """Cancel a queued move before any worker claims it; return its state afterwards
    (``cancelled``, or the state it had: a claimed move is cancelled through its record)."""
    rows = journal.query(
        "WITH u AS (UPDATE vmmove_queue SET state = 'cancelled', ended_at = now(), "
        "note = 'cancelled while queued' WHERE id = %s AND state = 'queued' RETURNING id) "
        "SELECT q.state, q.record, (SELECT count(*) FROM u) FROM vmmove_queue q WHERE q.id = %s",
        (item_id, item_id),
    )
    if not rows:
        raise NotFound(f"no queued move {item_id!r}")
    state, record, cancelled = rows[0]
    if cancelled:
        return "cancelled"
    if state == "claimed" and record:
        journal.request_cancel(str(record))
        return f"claimed: cancel requested for record {record}"
    return str(state)


def _fits(row: tuple[Any, ...], counts: dict[str, dict[str, int]], total: int) -> bool:
    _, source, target, clusters, max_source, max_target, max_cluster, max_total = row
    if max_total is not None and total >= max_total:
        return False
    if max_source is not None and counts["source"].get(source, 0) >= max_source:
        return False
    if max_target is not None and target and counts["target"].get(target, 0) >= max_target:
        return False
    if max_cluster is not None:
        return all(counts["cluster"].get(c, 0) < max_cluster for c in clusters)
    return True


def requeue_dead_claims(journal: PgJournal, lease: float) -> None:
    """Claims not begun go back to the queue: their worker died first, or a lease went by
    (the claim committed but its answer was lost with the connection: the worker never
    saw it). A late begin of a requeued claim finds it gone and starts nothing."""
    journal.query(
        "UPDATE vmmove_queue q SET state = 'queued', worker = NULL, attempts = attempts + 1 "
        "WHERE estate = %(e)s AND state = 'claimed' AND record IS NULL AND ("
        "claimed_at < now() - %(lease)s * interval '1 second' OR NOT EXISTS "
        "(SELECT 1 FROM vmmove_workers w WHERE w.id = q.worker "
        "AND w.seen_at > now() - %(lease)s * interval '1 second'))",
        {"e": journal.estate, "lease": lease},
    )


_PAGE = 200  # queued rows read at a time: enough to fill a worker past full hosts


def claim(journal: PgJournal, worker: str, want: int) -> tuple[list[Item], bool]:
    """Claim up to ``want`` queued moves within every limit, for ``worker``. Also says
    whether queued moves were left behind because a limit was full (another worker's end
    may free them)."""
    if want <= 0:
        return [], False
    estate = journal.estate
    with journal.transaction() as db:
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('vmmove-claim'), hashtext(%s))", (estate,)
        )
        counts: dict[str, dict[str, int]] = {"source": {}, "target": {}, "cluster": {}}
        held = db.execute(
            "SELECT source, target, clusters FROM vmmove_queue WHERE estate = %s "
            "AND state = 'claimed'",
            (estate,),
        ).fetchall()
        for source, target, clusters in held:
            _count(counts, source, target, clusters)
        total = len(held)
        picked: list[str] = []
        left = False
        after = -1
        # Not FOR UPDATE: the advisory lock already serialises claims, and locking every
        # row read would write each of them; the UPDATE below re-checks the state instead.
        while len(picked) < want:
            rows = db.execute(
                "SELECT seq, id, source, target, clusters, max_source, max_target, "
                "max_cluster, max_total FROM vmmove_queue WHERE estate = %s "
                "AND state = 'queued' AND seq > %s ORDER BY seq LIMIT %s",
                (estate, after, _PAGE),
            ).fetchall()
            for row in rows:
                if len(picked) >= want:
                    break
                if not _fits(row[1:], counts, total):
                    left = True  # held back by a limit, not by this worker's capacity
                    continue
                _count(counts, row[2], row[3], row[4])
                total += 1
                picked.append(row[1])
            if len(rows) < _PAGE:
                break
            after = rows[-1][0]
        items: list[Item] = []
        if picked:
            # A cancel of a queued move may have come first: only the still-queued ones.
            claimed = db.execute(
                "UPDATE vmmove_queue SET state = 'claimed', worker = %s, claimed_at = now() "
                "WHERE id = ANY(%s) AND state = 'queued' RETURNING id, vm, target, spec",
                (worker, picked),
            ).fetchall()
            order = {item_id: i for i, item_id in enumerate(picked)}
            for item_id, vm, target, spec in sorted(claimed, key=lambda r: order[r[0]]):
                items.append(Item(id=item_id, vm=vm, spec={**json.loads(spec), "target": target}))
    return items, left


def _count(
    counts: dict[str, dict[str, int]], source: str, target: str | None, clusters: list[str]
) -> None:
    counts["source"][source] = counts["source"].get(source, 0) + 1
    if target:
        counts["target"][target] = counts["target"].get(target, 0) + 1
    for c in clusters:
        counts["cluster"][c] = counts["cluster"].get(c, 0) + 1


def settle_item(journal: PgJournal, worker: str, item_id: str, state: str, note: str) -> None:
    """A claimed move that never became a record (refused at once) ends here, only while
    the claim is still this worker's (a frozen worker may wake up to a claim long gone)."""
    journal.query(
        "UPDATE vmmove_queue SET state = %s, note = %s, ended_at = now() WHERE id = %s "
        "AND worker = %s AND state = 'claimed' AND record IS NULL",
        (state, note, item_id, worker),
    )


def requeue_record(journal: PgJournal, record_id: str) -> None:
    """A record that ended before anything was asked of the platform (its worker died
    first): its move goes back to the queue for another try."""
    journal.query(
        "UPDATE vmmove_queue SET state = 'queued', worker = NULL, record = NULL, "
        "attempts = attempts + 1, ended_at = NULL WHERE record = %s AND state = 'done'",
        (record_id,),
    )
    journal.query("SELECT pg_notify(%s, %s)", (journal.channel, json.dumps({"k": "queue"})))
