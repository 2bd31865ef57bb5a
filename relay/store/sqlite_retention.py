"""Retention on SQLite: pruning delivered events, purging dead deliveries (README: Retention).

Blocking functions on the store's worker thread, like ``sqlite_queries``. Each batch is one
BEGIN IMMEDIATE ... COMMIT of at most ``limit`` events or deliveries: the worker thread and the
write lock are shared with ingest, so a callback queued behind a batch waits for that one short
batch, never for a whole pass.

Space: deleted rows leave free pages, which SQLite reuses for new rows whatever the database's
mode. A database created by this relay is in ``auto_vacuum = INCREMENTAL`` mode, and
``vacuum_step`` gives the free pages beyond a small reserve back to the file system, a bounded
number at a time. An older database (created before auto_vacuum was set) keeps its file size
and reuses the pages; ``PRAGMA auto_vacuum = INCREMENTAL; VACUUM;`` with relay stopped converts it.
"""

from __future__ import annotations

import sqlite3

from relay.store.base import PruneCount

# Events a prune may remove: received before the cutoff, and every delivery (if any) delivered
# and last changed before it. Oldest first, so a capped batch takes the oldest.
_PRUNABLE_WHERE = """
    e.received_at < :before AND NOT EXISTS (
        SELECT 1 FROM deliveries AS d
        WHERE d.event_id = e.id AND (d.state <> 'delivered' OR d.updated_at >= :before))
"""
_PRUNABLE = f"""
    SELECT e.id FROM events AS e WHERE {_PRUNABLE_WHERE}
    ORDER BY e.received_at, e.id
    LIMIT :limit
"""
_PRUNABLE_COUNTS = f"""
    WITH gone AS (SELECT e.id FROM events AS e WHERE {_PRUNABLE_WHERE}),
        gone_deliveries AS (SELECT id FROM deliveries WHERE event_id IN gone)
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_deliveries),
        (SELECT count(*) FROM attempts WHERE delivery_id IN gone_deliveries)
"""
# Reprocessed quarantine rows have become events: they go with the other old rows.
_QUARANTINE_PRUNE = """
    DELETE FROM quarantine WHERE rowid IN (
        SELECT rowid FROM quarantine
        WHERE state = 'reprocessed' AND received_at < :before
        ORDER BY received_at
        LIMIT :limit)
"""
_DEAD = "d.state = 'dead' AND d.updated_at < :before"
_PURGEABLE = f"""
    SELECT d.id, d.event_id FROM deliveries AS d WHERE {_DEAD}
    ORDER BY d.updated_at, d.rowid
    LIMIT :limit
"""
# An event goes with its dead deliveries once no other delivery of it is left.
_PURGEABLE_COUNTS = f"""
    WITH dead AS (SELECT d.id, d.event_id FROM deliveries AS d WHERE {_DEAD})
    SELECT
        (SELECT count(DISTINCT g.event_id) FROM dead AS g WHERE NOT EXISTS (
            SELECT 1 FROM deliveries AS o
            WHERE o.event_id = g.event_id AND NOT (o.state = 'dead' AND o.updated_at < :before))),
        (SELECT count(*) FROM dead),
        (SELECT count(*) FROM attempts WHERE delivery_id IN (SELECT id FROM dead))
"""

# Ids per IN (...) list: below SQLite's bound-parameter limit (999 before 3.32).
_CHUNK = 500

# Free pages kept for the next inserts, and the most given back to the file system in one
# step (2 MiB at the default 4 KiB page): the step moves at most that many pages, a short write.
VACUUM_RESERVE = 256
VACUUM_STEP = 512
_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def prune(conn: sqlite3.Connection, *, before: float, limit: int) -> PruneCount:
    """One batch of ``Store.prune``, in one write transaction."""
    args = {"before": before, "limit": limit}
    conn.execute("BEGIN IMMEDIATE")
    events = [row[0] for row in conn.execute(_PRUNABLE, args)]
    attempts = _each_chunk(
        conn,
        "DELETE FROM attempts WHERE delivery_id IN"
        " (SELECT id FROM deliveries WHERE event_id IN ({}))",
        events,
    )
    deliveries = _each_chunk(conn, "DELETE FROM deliveries WHERE event_id IN ({})", events)
    removed = _each_chunk(conn, "DELETE FROM events WHERE id IN ({})", events)
    conn.execute(_QUARANTINE_PRUNE, args)
    conn.execute("COMMIT")
    return PruneCount(events=removed, deliveries=deliveries, attempts=attempts)


def count_prunable(conn: sqlite3.Connection, *, before: float) -> PruneCount:
    """What ``Store.prune`` would remove, every match (a read: takes no write lock)."""
    events, deliveries, attempts = conn.execute(_PRUNABLE_COUNTS, {"before": before}).fetchone()
    return PruneCount(events=events, deliveries=deliveries, attempts=attempts)


def purge_dead(conn: sqlite3.Connection, *, before: float, limit: int) -> PruneCount:
    """One batch of ``Store.purge_dead``, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    rows = conn.execute(_PURGEABLE, {"before": before, "limit": limit}).fetchall()
    ids = [delivery_id for delivery_id, _ in rows]
    attempts = _each_chunk(conn, "DELETE FROM attempts WHERE delivery_id IN ({})", ids)
    deliveries = _each_chunk(conn, "DELETE FROM deliveries WHERE id IN ({})", ids)
    emptied = _each_chunk(
        conn,
        "DELETE FROM events WHERE id IN ({}) AND NOT EXISTS"
        " (SELECT 1 FROM deliveries AS d WHERE d.event_id = events.id)",
        sorted({event_id for _, event_id in rows}),
    )
    conn.execute("COMMIT")
    return PruneCount(events=emptied, deliveries=deliveries, attempts=attempts)


def count_purgeable(conn: sqlite3.Connection, *, before: float) -> PruneCount:
    """What ``Store.purge_dead`` would remove, every match (a read)."""
    events, deliveries, attempts = conn.execute(_PURGEABLE_COUNTS, {"before": before}).fetchone()
    return PruneCount(events=events, deliveries=deliveries, attempts=attempts)


def vacuum_step(conn: sqlite3.Connection) -> int:
    """Give free pages beyond ``VACUUM_RESERVE`` back to the file system, at most
    ``VACUUM_STEP`` of them; how many went. Nothing on a database not in incremental mode."""
    (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
    if mode != _INCREMENTAL:
        return 0
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    pages = min(VACUUM_STEP, free - VACUUM_RESERVE)
    if pages <= 0:
        return 0
    # executescript steps the statement to its end: execute() would step it once, which
    # frees one page.
    conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    (left,) = conn.execute("PRAGMA freelist_count").fetchone()
    return int(free - left)


def _each_chunk(conn: sqlite3.Connection, sql: str, ids: list[str]) -> int:
    """Run ``sql`` with its ``IN ({})`` filled by ``ids``, a chunk at a time; rows changed."""
    changed = 0
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        changed += conn.execute(sql.format(", ".join("?" * len(chunk))), chunk).rowcount
    return changed
