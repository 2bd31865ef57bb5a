"""Retention on PostgreSQL: pruning delivered events, purging dead deliveries (README: Retention).

Each batch is one transaction of at most ``limit`` events or deliveries, so the row locks it
holds are few and short. Rows are locked before they are checked and removed: a replay or a
re-route of the same rows in another replica either waits for the batch or is seen by it, and
replicas pruning at once skip each other's rows (SKIP LOCKED) instead of waiting on them.
Autovacuum makes the deleted rows' space reusable; the files do not shrink.

Lock order: a prune locks its events, then their deliveries; a purge locks its dead
deliveries, then their events. The two meet on no row: a prune takes only events whose every
delivery was delivered before the cutoff, and a delivery that died since changed after it. (A
deadlock all the same is rolled back by the server and the batch run again, as every write.)
"""

from __future__ import annotations

from psycopg.rows import TupleRow

from relay.store.base import PruneCount
from relay.store.postgres_queries import Conn

_PRUNABLE_WHERE = """
    e.received_at < %(before)s AND NOT EXISTS (
        SELECT 1 FROM deliveries AS d
        WHERE d.event_id = e.id AND (d.state <> 'delivered' OR d.updated_at >= %(before)s))
"""
PRUNABLE_SQL = f"""
    SELECT e.id FROM events AS e WHERE {_PRUNABLE_WHERE}
    ORDER BY e.received_at, e.id COLLATE "C"
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
"""
PRUNABLE_COUNTS_SQL = f"""
    WITH gone AS (SELECT e.id FROM events AS e WHERE {_PRUNABLE_WHERE}),
        gone_deliveries AS (SELECT d.id FROM deliveries AS d JOIN gone ON d.event_id = gone.id)
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_deliveries),
        (SELECT count(*) FROM attempts AS a JOIN gone_deliveries AS g ON a.delivery_id = g.id)
"""
# The candidates' deliveries as they are now, locked: a replay since the candidates were read
# shows here (and one after this waits for the batch).
DELIVERIES_OF_SQL = """
    SELECT id, event_id, state, updated_at FROM deliveries
    WHERE event_id = ANY(%(events)s)
    ORDER BY seq
    FOR UPDATE
"""
QUARANTINE_PRUNE_SQL = """
    DELETE FROM quarantine WHERE id IN (
        SELECT id FROM quarantine
        WHERE state = 'reprocessed' AND received_at < %(before)s
        ORDER BY received_at, seq
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
"""
_DEAD = "d.state = 'dead' AND d.updated_at < %(before)s"
PURGEABLE_SQL = f"""
    SELECT d.id, d.event_id FROM deliveries AS d WHERE {_DEAD}
    ORDER BY d.updated_at, d.seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
"""
PURGEABLE_COUNTS_SQL = f"""
    WITH dead AS (SELECT d.id, d.event_id FROM deliveries AS d WHERE {_DEAD})
    SELECT
        (SELECT count(DISTINCT g.event_id) FROM dead AS g WHERE NOT EXISTS (
            SELECT 1 FROM deliveries AS o
            WHERE o.event_id = g.event_id
                AND NOT (o.state = 'dead' AND o.updated_at < %(before)s))),
        (SELECT count(*) FROM dead),
        (SELECT count(*) FROM attempts AS a JOIN dead ON a.delivery_id = dead.id)
"""
# Locked first: a re-route adding a delivery to one of them now waits, then finds it gone.
LOCK_EVENTS_SQL = "SELECT id FROM events WHERE id = ANY(%(events)s) ORDER BY id FOR UPDATE"
DELETE_EMPTIED_SQL = """
    DELETE FROM events AS e
    WHERE e.id = ANY(%(events)s)
        AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.event_id = e.id)
"""


async def prune(conn: Conn, *, before: float, limit: int) -> PruneCount:
    """One batch of ``Store.prune``, in one transaction."""
    args = {"before": before, "limit": limit}
    async with conn.transaction():
        candidates = [row[0] for row in await (await conn.execute(PRUNABLE_SQL, args)).fetchall()]
        count = PruneCount()
        if candidates:
            cur = await conn.execute(DELIVERIES_OF_SQL, {"events": candidates})
            count = await _remove(conn, candidates, await cur.fetchall(), before)
        await conn.execute(QUARANTINE_PRUNE_SQL, args)
    return count


async def _remove(
    conn: Conn, candidates: list[str], deliveries: list[TupleRow], before: float
) -> PruneCount:
    """Delete the candidates whose locked deliveries still qualify, with those deliveries."""
    kept = {
        event_id
        for _, event_id, state, updated_at in deliveries
        if state != "delivered" or updated_at >= before
    }
    events = [e for e in candidates if e not in kept]
    ids = [delivery_id for delivery_id, event_id, _, _ in deliveries if event_id not in kept]
    attempts = await _delete(conn, "DELETE FROM attempts WHERE delivery_id = ANY(%s)", ids)
    removed = await _delete(conn, "DELETE FROM deliveries WHERE id = ANY(%s)", ids)
    gone = await _delete(conn, "DELETE FROM events WHERE id = ANY(%s)", events)
    return PruneCount(events=gone, deliveries=removed, attempts=attempts)


async def count_prunable(conn: Conn, *, before: float) -> PruneCount:
    """What ``Store.prune`` would remove, every match (a read: locks nothing)."""
    row = await (await conn.execute(PRUNABLE_COUNTS_SQL, {"before": before})).fetchone()
    return _count(row)


async def purge_dead(conn: Conn, *, before: float, limit: int) -> PruneCount:
    """One batch of ``Store.purge_dead``, in one transaction."""
    async with conn.transaction():
        cur = await conn.execute(PURGEABLE_SQL, {"before": before, "limit": limit})
        rows = await cur.fetchall()
        ids = [delivery_id for delivery_id, _ in rows]
        attempts = await _delete(conn, "DELETE FROM attempts WHERE delivery_id = ANY(%s)", ids)
        removed = await _delete(conn, "DELETE FROM deliveries WHERE id = ANY(%s)", ids)
        events = sorted({event_id for _, event_id in rows})
        emptied = 0
        if events:
            await conn.execute(LOCK_EVENTS_SQL, {"events": events})
            emptied = (await conn.execute(DELETE_EMPTIED_SQL, {"events": events})).rowcount
    return PruneCount(events=emptied, deliveries=removed, attempts=attempts)


async def count_purgeable(conn: Conn, *, before: float) -> PruneCount:
    """What ``Store.purge_dead`` would remove, every match (a read)."""
    row = await (await conn.execute(PURGEABLE_COUNTS_SQL, {"before": before})).fetchone()
    return _count(row)


async def _delete(conn: Conn, sql: str, ids: list[str]) -> int:
    if not ids:
        return 0
    return (await conn.execute(sql, (ids,))).rowcount


def _count(row: TupleRow | None) -> PruneCount:
    if row is None:  # an aggregate always has its row
        return PruneCount()
    events, deliveries, attempts = row
    return PruneCount(events=events, deliveries=deliveries, attempts=attempts)
