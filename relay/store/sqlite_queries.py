"""The blocking half of the SQLite store: schema, migrations and every statement.

Each function takes the connection and runs on the store's worker thread; none knows about
asyncio. Any transaction a function opens it also ends, except when it raises: the caller
rolls back then.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

from relay.errors import StoreUnavailableError
from relay.events import StoredEvent, TaskEvent
from relay.store.base import (
    LOST_ATTEMPT,
    QUARANTINE_COLUMNS,
    SILENCE_COLUMNS,
    AttemptRecord,
    Claim,
    Cursor,
    DeliveryFilter,
    DeliveryRecord,
    DeliveryState,
    EventFilter,
    IngestResult,
    NewDelivery,
    Outcome,
    QuarantinedCallback,
    QueueStats,
    RejectedRequest,
    Silence,
)
from relay.store.memory import with_quota
from relay.store.sqlite_writer import WriterConnection

# Applied in order, each once, recorded in schema_version. Append; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        provider TEXT NOT NULL,
        task_id TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        status TEXT NOT NULL,
        received_at REAL NOT NULL,
        event_json TEXT NOT NULL,
        UNIQUE (source, dedupe_key)
    );
    CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES events (id),
        destination TEXT NOT NULL,
        route INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_token TEXT,
        lease_until REAL,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        -- next_attempt_at while pending, lease_until while sending: one column, so claiming
        -- is a single index range scan whichever way a delivery fell due.
        due_at REAL
    );
    CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (due_at)
        WHERE state IN ('pending', 'sending');
    -- For `relay deliveries`, newest first, with and without a state filter.
    CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries (created_at);
    CREATE INDEX IF NOT EXISTS deliveries_state_created ON deliveries (state, created_at);
    CREATE TABLE IF NOT EXISTS attempts (
        delivery_id TEXT NOT NULL REFERENCES deliveries (id),
        attempt INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
    """,
    # Ordered groups (one Slack message per task), channel state and pacing.
    """
    ALTER TABLE deliveries ADD COLUMN grp TEXT;
    CREATE INDEX IF NOT EXISTS deliveries_group ON deliveries (grp, destination)
        WHERE grp IS NOT NULL;
    CREATE TABLE IF NOT EXISTS channel_state (
        destination TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (destination, key)
    );
    CREATE TABLE IF NOT EXISTS pacing (
        key TEXT PRIMARY KEY,
        free_at REAL NOT NULL
    );
    """,
    # Callbacks no adapter could read, kept for `relay reprocess`; events newest first.
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        provider TEXT NOT NULL,
        received_at REAL NOT NULL,
        reason TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT NOT NULL,
        query TEXT NOT NULL,
        client_ip TEXT,
        state TEXT NOT NULL CHECK (state IN ('quarantined', 'reprocessed')),
        event_id TEXT,
        updated_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS quarantine_state_received ON quarantine (state, received_at);
    CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
    """,
    # Filtered listings paged by (time, id), queue depth, refused callbacks.
    """
    -- Each common filter of find_events / find_deliveries reads one index in its order, ties
    -- by id included. These replace the (time)-only indexes of migration 1 and 3.
    DROP INDEX IF EXISTS deliveries_created;
    DROP INDEX IF EXISTS deliveries_state_created;
    DROP INDEX IF EXISTS events_received;
    CREATE INDEX IF NOT EXISTS deliveries_created_id ON deliveries (created_at, id);
    CREATE INDEX IF NOT EXISTS deliveries_state_created_id
        ON deliveries (state, created_at, id);
    CREATE INDEX IF NOT EXISTS deliveries_destination_created_id
        ON deliveries (destination, created_at, id);
    -- A delivery's event: the filter, and retention's look-up of an event's deliveries.
    CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
    -- queue_stats at every scrape: covering, and as small as the backlog plus the dead.
    CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (state, destination)
        WHERE state IN ('pending', 'sending', 'dead');
    CREATE INDEX IF NOT EXISTS events_received_id ON events (received_at, id);
    CREATE INDEX IF NOT EXISTS events_source_received_id ON events (source, received_at, id);
    CREATE INDEX IF NOT EXISTS events_task ON events (task_id);
    CREATE TABLE IF NOT EXISTS rejected (
        seq INTEGER PRIMARY KEY,  -- the rowid: insertion order
        source TEXT NOT NULL,
        received_at REAL NOT NULL,
        client_ip TEXT,
        path TEXT NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL,
        excerpt TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS rejected_source_received ON rejected (source, received_at, seq);
    """,
    # Readiness writes: a row rewritten by every ping, so a full disk or a read-only file
    # shows in /readyz, not only in the callbacks' 503s.
    """
    CREATE TABLE IF NOT EXISTS heartbeat (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at REAL NOT NULL
    );
    """,
    # Silences: the 'silenced' state (and what holds each one), which SQLite's CHECK cannot
    # gain in place: the table is rebuilt (SQLite's documented way, foreign keys off while it
    # runs; see migrate), rowids kept, as they are the groups' order.
    """
    CREATE TABLE deliveries_new (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES events (id),
        destination TEXT NOT NULL,
        route INTEGER NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('pending', 'sending', 'delivered', 'dead', 'silenced')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_token TEXT,
        lease_until REAL,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        due_at REAL,
        grp TEXT,
        held_by TEXT
    );
    INSERT INTO deliveries_new (rowid, id, event_id, destination, route, state, attempts,
        next_attempt_at, lease_token, lease_until, last_error, created_at, updated_at, due_at,
        grp)
    SELECT rowid, id, event_id, destination, route, state, attempts, next_attempt_at,
        lease_token, lease_until, last_error, created_at, updated_at, due_at, grp
    FROM deliveries ORDER BY rowid;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_new RENAME TO deliveries;
    CREATE INDEX deliveries_due ON deliveries (due_at) WHERE state IN ('pending', 'sending');
    CREATE INDEX deliveries_group ON deliveries (grp, destination) WHERE grp IS NOT NULL;
    CREATE INDEX deliveries_created_id ON deliveries (created_at, id);
    CREATE INDEX deliveries_state_created_id ON deliveries (state, created_at, id);
    CREATE INDEX deliveries_destination_created_id ON deliveries (destination, created_at, id);
    CREATE INDEX deliveries_event ON deliveries (event_id);
    CREATE INDEX deliveries_queue ON deliveries (state, destination)
        WHERE state IN ('pending', 'sending', 'dead', 'silenced');
    CREATE INDEX deliveries_held ON deliveries (held_by) WHERE state = 'silenced';
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        comment TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX silences_ends ON silences (ends_at);
    """,
)

_INSERT_EVENT = """
    INSERT INTO events
        (id, source, provider, task_id, dedupe_key, status, received_at, event_json)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (source, dedupe_key) DO NOTHING
"""
# Multi-row forms for the batch path: one statement (one sqlite3_step) per table however
# many rows, because the sqlite3 module gives up and retakes the GIL around every step,
# and each retake can wait for the event loop thread's switch interval.
# "{}" is where the rows go.
_EVENTS_INTO = (
    "INSERT INTO events (id, source, provider, task_id, dedupe_key, status, received_at, "
    "event_json) VALUES {} ON CONFLICT (source, dedupe_key) DO NOTHING"
)
_EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"
_DELIVERIES_INTO = (
    "INSERT INTO deliveries (id, event_id, destination, route, state, attempts, "
    "next_attempt_at, created_at, updated_at, due_at, grp) VALUES {}"
)
_DELIVERY_ROW = "(?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)"
# Rows per multi-row INSERT: 8 parameters each stays far below SQLite's 32,766 limit
# (999 before 3.32, hence the modest figure).
_ROWS_PER_INSERT = 100
_INSERT_DELIVERY = """
    INSERT INTO deliveries (id, event_id, destination, route, state, attempts,
        next_attempt_at, created_at, updated_at, due_at, grp)
    VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)
"""
# A delivery of an ordered group waits while an earlier one of its group and destination is
# unfinished (rowid is creation order).
_NOT_HELD_BACK = """
    (d.grp IS NULL OR NOT EXISTS (
        SELECT 1 FROM deliveries AS p
        WHERE p.grp = d.grp AND p.destination = d.destination AND p.rowid < d.rowid
            AND p.state IN ('pending', 'sending')))
"""
# INDEXED BY: without statistics the planner prefers deliveries_state_created and sorts
# every pending row; the partial due index is always right here (and its predicate is
# repeated verbatim in WHERE, which SQLite needs to use it).
_CLAIM_TEMPLATE = f"""
    SELECT d.id, d.destination, d.route, d.attempts, e.event_json, d.state, d.updated_at,
        d.due_at, e.id, e.source, e.task_id, e.status, e.received_at
    FROM deliveries AS d INDEXED BY deliveries_due JOIN events AS e ON e.id = d.event_id
    WHERE d.state IN ('pending', 'sending') AND d.due_at <= ? AND {_NOT_HELD_BACK}{{skip}}
    ORDER BY d.due_at, d.rowid
    LIMIT ?
"""


def claim_sql(skipped: int) -> str:
    """CLAIM_SQL leaving out the deliveries to ``skipped`` destinations (one ``?`` each)."""
    if not skipped:
        return _CLAIM_TEMPLATE.format(skip="")
    marks = ", ".join("?" * skipped)
    return _CLAIM_TEMPLATE.format(skip=f" AND d.destination NOT IN ({marks})")


CLAIM_SQL = claim_sql(0)
NEXT_DUE_SQL = f"""
    SELECT d.due_at FROM deliveries AS d INDEXED BY deliveries_due
    WHERE d.state IN ('pending', 'sending') AND {_NOT_HELD_BACK}
    ORDER BY d.due_at
    LIMIT 1
"""
# A claim's leases in one statement rather than one per row (executemany steps each row on its
# own, with the write lock held): "{}" is where the (id, token) rows go, after the three values
# every row shares.
_LEASE_MANY = """
    UPDATE deliveries
    SET state = 'sending', attempts = deliveries.attempts + 1, lease_token = v.token,
        lease_until = ?, due_at = ?, updated_at = ?
    FROM (SELECT column1 AS id, column2 AS token FROM (VALUES {})) AS v
    WHERE deliveries.id = v.id
"""
_FINISH = """
    UPDATE deliveries
    SET state = ?, next_attempt_at = ?, due_at = ?, lease_token = NULL, lease_until = NULL,
        last_error = ?, updated_at = ?, held_by = ?
    WHERE id = ? AND state = 'sending' AND lease_token = ?
"""
_RECORD_COLUMNS = """
    SELECT d.id, d.event_id, e.source, e.task_id, e.status, d.destination, d.route, d.state,
        d.attempts, d.next_attempt_at, d.last_error, d.created_at, d.updated_at
    FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
"""


class IngestItem(NamedTuple):
    """One ingest as the worker thread sees it: the event serialized on the loop already."""

    event: TaskEvent
    event_json: str
    deliveries: list[NewDelivery]


def statements(script: str) -> Iterator[str]:
    """Split a script into statements; complete_statement keeps triggers' inner ';' intact."""
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                yield buf
            buf = ""


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing migrations in one transaction.

    Statement by statement rather than executescript(), which would commit on its own: this
    way the version check and the changes are atomic, even with several processes opening.
    """
    # A migration that rebuilds a table needs foreign keys off (they cannot change inside a
    # transaction); they are checked before the commit instead, and back on after.
    (enforced,) = conn.execute("PRAGMA foreign_keys").fetchone()
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        if current > len(MIGRATIONS):
            raise StoreUnavailableError(
                f"store: open: database schema version {current} is newer than this relay "
                f"({len(MIGRATIONS)})"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        broken = conn.execute("PRAGMA foreign_key_check").fetchone()
        if broken is not None:
            raise StoreUnavailableError(f"store: open: migration broke a foreign key: {broken}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    finally:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if enforced else 'OFF'}")


def ping(conn: sqlite3.Connection) -> None:
    """A real write, committed: fails on a read-only, locked or full database, as ingest
    would."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO heartbeat (id, at) VALUES (1, (julianday('now') - 2440587.5) * 86400.0)"
        " ON CONFLICT (id) DO UPDATE SET at = excluded.at"
    )
    conn.execute("COMMIT")


def write_batch(
    conn: sqlite3.Connection, batch: list[IngestItem]
) -> list[IngestResult | StoreUnavailableError]:
    """Write a batch in one transaction. Any failure of the transaction fails all of it.

    The fast path is set-based: one insert of every event that skips those already stored,
    then one of the new events' deliveries, so the statements per batch do not grow with its
    size (this runs before every provider gets its 200). If that trips a constraint (an id
    clash: a bug), the batch is redone item by item, so only the offending item is refused.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = _write_set(conn, batch)
    except sqlite3.IntegrityError:
        if conn.in_transaction:
            conn.rollback()
        conn.execute("BEGIN IMMEDIATE")
        results = [_write_one(conn, item) for item in batch]
    conn.execute("COMMIT")
    return results


# SQLite caps bound parameters (999 before 3.32), so ids and keys are looked up in chunks.
_LOOKUP_CHUNK = 500  # values per look-up query


def _write_set(
    conn: sqlite3.Connection, batch: list[IngestItem]
) -> list[IngestResult | StoreUnavailableError]:
    # Duplicates are rare, so every event is offered and the insert skips the stored ones
    # (ON CONFLICT DO NOTHING); only when it stored fewer than offered is there anything to
    # look up. The write lock is held since BEGIN IMMEDIATE: no other writer slips in between.
    stored = _insert_rows(conn, _EVENTS_INTO, _EVENT_ROW, [_event_row(item) for item in batch])
    if stored == len(batch):
        new = batch
        results: list[IngestResult | StoreUnavailableError] = [
            IngestResult(event_id=item.event.id, duplicate=False) for item in batch
        ]
    else:
        new, results = _sort_out_duplicates(conn, batch)
    deliveries = [row for item in new for row in _delivery_rows(item)]
    _insert_rows(conn, _DELIVERIES_INTO, _DELIVERY_ROW, deliveries)
    return results


def _sort_out_duplicates(
    conn: sqlite3.Connection, batch: list[IngestItem]
) -> tuple[list[IngestItem], list[IngestResult | StoreUnavailableError]]:
    """After the insert skipped some events: the items it stored, and every item's result.

    An item whose id is now in the table was stored by that insert (a clash with an older row
    would have raised instead); any other was a duplicate, of an older row or of an earlier
    item in this batch, and gets that row's id.
    """
    ids = [item.event.id for item in batch]
    stored = {row[0] for row in _lookup(conn, "SELECT id FROM events WHERE id IN ({})", [], ids)}
    by_source: dict[str, set[str]] = {}
    for item in batch:
        if item.event.id not in stored:
            by_source.setdefault(item.event.source, set()).add(item.event.dedupe_key)
    known: dict[tuple[str, str], str] = {}
    for source, dedupe_keys in by_source.items():
        # One source per query: (source = ? AND dedupe_key IN (...)) uses the unique index,
        # where a row-value IN over both columns makes SQLite scan the whole table.
        sql = "SELECT dedupe_key, id FROM events WHERE source = ? AND dedupe_key IN ({})"
        rows = _lookup(conn, sql, [source], sorted(dedupe_keys))
        known.update(((source, dedupe), event_id) for dedupe, event_id in rows)
    new: list[IngestItem] = []
    results: list[IngestResult | StoreUnavailableError] = []
    for item in batch:
        event = item.event
        if event.id in stored:
            new.append(item)
            results.append(IngestResult(event_id=event.id, duplicate=False))
        else:
            existing = known[(event.source, event.dedupe_key)]
            results.append(IngestResult(event_id=existing, duplicate=True))
    return new, results


def _lookup(
    conn: sqlite3.Connection, sql: str, args: list[str], values: list[str]
) -> list[tuple[str, ...]]:
    """The rows (of text columns) of ``sql``, whose ``IN ({})`` is filled with ``values``, a
    chunk at a time."""
    rows: list[tuple[str, ...]] = []
    for start in range(0, len(values), _LOOKUP_CHUNK):
        chunk = values[start : start + _LOOKUP_CHUNK]
        rows.extend(conn.execute(sql.format(", ".join("?" * len(chunk))), [*args, *chunk]))
    return rows


def _insert_rows(
    conn: sqlite3.Connection, into: str, row: str, rows: list[tuple[object, ...]]
) -> int:
    """Insert ``rows`` with multi-row statements; how many rows were inserted."""
    inserted = 0
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        sql = into.format(", ".join([row] * len(chunk)))
        inserted += conn.execute(sql, [v for r in chunk for v in r]).rowcount
    return inserted


def _event_row(item: IngestItem) -> tuple[object, ...]:
    e = item.event
    received = e.received_at.timestamp()
    return (
        e.id,
        e.source,
        e.provider,
        e.task_id,
        e.dedupe_key,
        e.status,
        received,
        item.event_json,
    )


def _delivery_rows(item: IngestItem) -> list[tuple[object, ...]]:
    """New deliveries are due at once: next_attempt_at = due_at = the event's arrival."""
    event_id, received = item.event.id, item.event.received_at.timestamp()
    return [
        (d.id, event_id, d.destination, d.route, received, received, received, received, d.group)
        for d in item.deliveries
    ]


def _write_one(conn: sqlite3.Connection, item: IngestItem) -> IngestResult | StoreUnavailableError:
    """One ingest inside the batch's transaction.

    A savepoint per item, so one item breaking a constraint (an id clash: a bug) is refused
    alone instead of failing everyone else in the batch.
    """
    event = item.event
    conn.execute("SAVEPOINT item")
    try:
        inserted = conn.execute(_INSERT_EVENT, _event_row(item)).rowcount
        if not inserted:
            # Duplicate of an earlier row or of an earlier item in this batch.
            (existing,) = conn.execute(
                "SELECT id FROM events WHERE source = ? AND dedupe_key = ?",
                (event.source, event.dedupe_key),
            ).fetchone()
            conn.execute("RELEASE item")
            return IngestResult(event_id=existing, duplicate=True)
        conn.executemany(_INSERT_DELIVERY, _delivery_rows(item))
        conn.execute("RELEASE item")
        return IngestResult(event_id=event.id, duplicate=False)
    except sqlite3.IntegrityError as exc:
        if not conn.in_transaction:  # RAISE(ROLLBACK) in a trigger ended the whole transaction
            raise
        conn.execute("ROLLBACK TO item")
        conn.execute("RELEASE item")
        return StoreUnavailableError(f"store: ingest: {exc}")


# The attempt row of an attempt whose lease expired before it recorded an outcome: started
# when leased, ended when the lease did (detail: LOST_ATTEMPT).
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, state, detail)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def in_flight_sql(capped: int) -> str:
    """Leased (sending, lease not expired) deliveries per destination, of ``capped`` ones.
    deliveries_queue's predicate is repeated verbatim so SQLite uses that partial index."""
    marks = ", ".join("?" * capped)
    return (
        "SELECT destination, count(*) FROM deliveries "
        "WHERE state IN ('pending', 'sending', 'dead', 'silenced') AND state = 'sending' "
        "AND due_at > ? "
        f"AND destination IN ({marks}) GROUP BY destination"
    )


def claim(
    conn: sqlite3.Connection,
    *,
    now: float,
    limit: int,
    lease: float,
    skip: Sequence[str] = (),
    caps: Mapping[str, int] | None = None,
    quota: Mapping[str, int] | None = None,
) -> list[Claim]:
    """Lease due deliveries, none to a destination in ``skip``, none past a destination's
    cap (counted with every process's leases) or its quota (this call's). BEGIN IMMEDIATE:
    another process cannot claim the same rows, nor count the same free slots."""
    with relaxed(conn):
        return _claim(conn, now, limit, lease, skip, caps, quota)


def _claim(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    lease: float,
    skip: Sequence[str],
    caps: Mapping[str, int] | None,
    quota: Mapping[str, int] | None,
) -> list[Claim]:
    conn.execute("BEGIN IMMEDIATE")
    room = dict(caps or {})
    if room:
        for destination, leased in conn.execute(in_flight_sql(len(room)), (now, *room)):
            room[destination] -= leased
    room = with_quota(room, quota)
    lease_until = now + lease
    claims: list[Claim] = []
    # A delivery taken over from an expired lease: the attempt that held it left no outcome.
    lost: list[tuple[object, ...]] = []
    # Destinations at their cap are left out of the query, so their backlog takes no place
    # in the window; one that fills up within a window drops its extra rows, and the window
    # is read again without it (at most once per capped destination).
    while len(claims) < limit:
        left_out = [*skip, *(d for d, r in room.items() if r <= 0)]
        rows = conn.execute(claim_sql(len(left_out)), (now, *left_out, limit - len(claims)))
        dropped = False
        batch = []
        fetched = rows.fetchall()
        for row in fetched:
            delivery_id, destination, route, attempts_so_far, event_json = row[:5]
            if destination in room:
                if room[destination] <= 0:
                    dropped = True
                    continue
                room[destination] -= 1
            batch.append(
                Claim(
                    delivery_id=delivery_id,
                    event_data=StoredEvent.from_row(
                        event_json,
                        id=row[8],
                        source=row[9],
                        task_id=row[10],
                        status=row[11],
                        received_at=row[12],
                    ),
                    destination=destination,
                    route=route,
                    attempt=attempts_so_far + 1,
                    lease_token=secrets.token_hex(16),
                    lease_until=lease_until,
                )
            )
        taken = {c.delivery_id for c in batch}
        lost.extend(
            (row[0], row[3], row[6], row[7], "pending", LOST_ATTEMPT)
            for row in fetched
            if row[0] in taken and row[5] == "sending"
        )
        for start in range(0, len(batch), _ROWS_PER_INSERT):
            chunk = batch[start : start + _ROWS_PER_INSERT]
            sql = _LEASE_MANY.format(", ".join(["(?, ?)"] * len(chunk)))
            conn.execute(
                sql,
                [
                    lease_until,
                    lease_until,
                    now,
                    *(v for c in chunk for v in (c.delivery_id, c.lease_token)),
                ],
            )
        claims.extend(batch)
        if not dropped:
            break
    if lost:
        conn.executemany(_INSERT_ATTEMPT, lost)
    conn.execute("COMMIT")
    return claims


class FinishItem(NamedTuple):
    """One attempt's outcome to record, as the worker thread sees it."""

    claim: Claim
    outcome: Outcome
    retry_at: float | None
    started_at: float
    now: float


@contextmanager
def relaxed(conn: sqlite3.Connection) -> Iterator[None]:
    """Commits inside wait for no fsync (``synchronous = NORMAL`` where the store is FULL).
    For the dispatcher's own writes, leases and outcomes: WAL keeps them in order with every
    later commit, and a power cut can only undo those since the last synced one: a delivery is sent
    again (at least once), never lost. Every other write is as durable as the store says."""
    level = conn.synchronous if isinstance(conn, WriterConnection) else None
    if level is None:
        (level,) = conn.execute("PRAGMA synchronous").fetchone()
    if level < 2:  # OFF or NORMAL already (FULL in WAL mode is synced after commits)
        yield
        return
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA synchronous = {level}")


def finish_batch(conn: sqlite3.Connection, batch: list[FinishItem]) -> list[bool]:
    """Record a batch of outcomes in one transaction (one fsync for all of them).

    Each is fenced by its lease token on its own: one whose lease was lost changes nothing
    and answers False, the others are recorded.
    """
    with relaxed(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len({i.claim.delivery_id for i in batch}) == len(batch):
                kept = _finish_many(conn, batch)
            else:
                # A delivery twice (a lost lease and its new holder): fenced item by item.
                kept = [_finish_one(conn, item) for item in batch]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return kept


# Outcomes of a batch in one statement per table (the sqlite3 module retakes the GIL around
# every statement): each row fenced by its own lease token; RETURNING names those recorded.
# "{}" is where the rows go.
_FINISH_MANY = """
    UPDATE deliveries
    SET state = v.state, next_attempt_at = v.retry_at, due_at = v.retry_at, lease_token = NULL,
        lease_until = NULL, last_error = v.detail, updated_at = v.now, held_by = v.held_by,
        attempts = deliveries.attempts - v.deferred
    FROM (SELECT column1 AS id, column2 AS token, column3 AS state, column4 AS retry_at,
            column5 AS detail, column6 AS now, column7 AS held_by, column8 AS deferred
          FROM (VALUES {})) AS v
    WHERE deliveries.id = v.id AND deliveries.state = 'sending'
        AND deliveries.lease_token = v.token
    RETURNING deliveries.id
"""
_FINISH_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"
_ATTEMPTS_INTO = (
    "INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, state, detail) VALUES {}"
)
_ATTEMPT_ROW = "(?, ?, ?, ?, ?, ?)"


def _finish_many(conn: sqlite3.Connection, batch: list[FinishItem]) -> list[bool]:
    kept: set[str] = set()
    for start in range(0, len(batch), _ROWS_PER_INSERT):
        chunk = batch[start : start + _ROWS_PER_INSERT]
        args: list[object] = []
        for item in chunk:
            outcome = item.outcome
            args += (
                item.claim.delivery_id,
                item.claim.lease_token,
                outcome.state,
                item.retry_at,
                outcome.detail,
                item.now,
                outcome.held_by if outcome.state == "silenced" else None,
                1 if outcome.deferred else 0,
            )
        sql = _FINISH_MANY.format(", ".join([_FINISH_ROW] * len(chunk)))
        kept.update(row[0] for row in conn.execute(sql, args).fetchall())
    # Each delivery is in the batch once (see finish_batch), so its id names its item.
    attempts: list[tuple[object, ...]] = [
        (
            i.claim.delivery_id,
            i.claim.attempt,
            i.started_at,
            i.now,
            i.outcome.state,
            i.outcome.detail,
        )
        for i in batch
        if i.claim.delivery_id in kept and not i.outcome.deferred
    ]
    _insert_rows(conn, _ATTEMPTS_INTO, _ATTEMPT_ROW, attempts)
    return [i.claim.delivery_id in kept for i in batch]


def _finish_one(conn: sqlite3.Connection, item: FinishItem) -> bool:
    claim, outcome = item.claim, item.outcome
    changed = conn.execute(
        _FINISH,
        (
            outcome.state,
            item.retry_at,
            item.retry_at,
            outcome.detail,
            item.now,
            outcome.held_by if outcome.state == "silenced" else None,
            claim.delivery_id,
            claim.lease_token,
        ),
    ).rowcount
    if changed != 1:
        return False
    if outcome.deferred:
        conn.execute(
            "UPDATE deliveries SET attempts = attempts - 1 WHERE id = ?", (claim.delivery_id,)
        )
        return True
    conn.execute(
        "INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, state, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            claim.delivery_id,
            claim.attempt,
            item.started_at,
            item.now,
            outcome.state,
            outcome.detail,
        ),
    )
    return True


def _record(row: tuple[object, ...]) -> DeliveryRecord:
    (id_, event_id, source, task_id, status, dest, route, state, attempts, nxt, err, ca, ua) = row
    return DeliveryRecord(
        id=cast(str, id_),
        event_id=cast(str, event_id),
        source=cast(str, source),
        task_id=cast(str, task_id),
        status=cast(str, status),
        destination=cast(str, dest),
        route=cast(int, route),
        state=cast(DeliveryState, state),  # the table's CHECK constraint guarantees it
        attempts=cast(int, attempts),
        next_attempt_at=cast("float | None", nxt),
        last_error=cast(str, err),
        created_at=cast(float, ca),
        updated_at=cast(float, ua),
    )


def _delivery_where(where: DeliveryFilter, before: Cursor | None) -> tuple[str, list[object]]:
    """The WHERE clause (and its arguments) of the deliveries ``where`` matches, after
    ``before`` in newest-first order."""
    # An event has few deliveries: with one, read them by the event index and sort them.
    # (The unary + keeps SQLite, which has no statistics, from picking another index.)
    other = "" if where.event_id is None else "+"
    terms: list[tuple[str, object]] = [
        (f"{other}d.state = ?", where.state),
        (f"{other}d.destination = ?", where.destination),
        ("d.event_id = ?", where.event_id),
        ("d.created_at >= ?", where.since),
        ("d.created_at < ?", where.until),
    ]
    return _where(terms, "(d.created_at, d.id) < (?, ?)", before)


def _where(
    terms: list[tuple[str, object]], after: str, before: Cursor | None
) -> tuple[str, list[object]]:
    """``terms`` whose value is not None, and the cursor's row-value comparison ``after``
    (which SQLite reads as a range of the (time, id) index), ANDed."""
    sql = [term for term, value in terms if value is not None]
    args = [value for _, value in terms if value is not None]
    if before is not None:
        sql.append(after)
        args.extend(before)
    return ("WHERE " + " AND ".join(sql) if sql else ""), args


def find_deliveries_query(
    where: DeliveryFilter, limit: int, before: Cursor | None
) -> tuple[str, list[object]]:
    """The statement of ``find_deliveries`` and its arguments (tests read its plan)."""
    clause, args = _delivery_where(where, before)
    sql = f"{_RECORD_COLUMNS} {clause} ORDER BY d.created_at DESC, d.id DESC LIMIT ?"
    return sql, [*args, limit]


def find_deliveries(
    conn: sqlite3.Connection, where: DeliveryFilter, limit: int, before: Cursor | None
) -> list[DeliveryRecord]:
    sql, args = find_deliveries_query(where, limit, before)
    return [_record(row) for row in conn.execute(sql, args)]


def count_deliveries(conn: sqlite3.Connection, where: DeliveryFilter) -> int:
    clause, args = _delivery_where(where, None)
    (count,) = conn.execute(f"SELECT count(*) FROM deliveries AS d {clause}", args).fetchone()
    return cast(int, count)


def find_events_query(
    where: EventFilter, limit: int, before: Cursor | None
) -> tuple[str, list[object]]:
    """The statement of ``find_events`` and its arguments (tests read its plan)."""
    # Likewise a task has few events: with one, the task index (see _delivery_where).
    other = "" if where.task_id is None else "+"
    terms: list[tuple[str, object]] = [
        (f"{other}e.source = ?", where.source),
        ("e.provider = ?", where.provider),
        ("e.status = ?", where.status),
        ("e.task_id = ?", where.task_id),
        # Read from the stored event rather than a column of its own: the ingest path
        # writes nothing more for a filter that only listings use.
        ("json_extract(e.event_json, '$.model') = ?", where.model),
        ("e.received_at >= ?", where.since),
        ("e.received_at < ?", where.until),
        # Names are checked by EventFilter: plain identifiers in the JSON path.
        *((f"json_extract(e.event_json, '$.labels.{name}') = ?", v) for name, v in where.labels),
    ]
    clause, args = _where(terms, "(e.received_at, e.id) < (?, ?)", before)
    sql = f"""
        SELECT e.event_json FROM events AS e {clause}
        ORDER BY e.received_at DESC, e.id DESC LIMIT ?
    """
    return sql, [*args, limit]


def find_events(
    conn: sqlite3.Connection, where: EventFilter, limit: int, before: Cursor | None
) -> list[TaskEvent]:
    sql, args = find_events_query(where, limit, before)
    return [TaskEvent.model_validate_json(row[0]) for row in conn.execute(sql, args)]


def get_delivery(conn: sqlite3.Connection, delivery_id: str) -> DeliveryRecord | None:
    row = conn.execute(f"{_RECORD_COLUMNS} WHERE d.id = ?", (delivery_id,)).fetchone()
    return None if row is None else _record(row)


def attempts(conn: sqlite3.Connection, delivery_id: str) -> list[AttemptRecord]:
    sql = """
        SELECT delivery_id, attempt, started_at, finished_at, state, detail
        FROM attempts WHERE delivery_id = ? ORDER BY rowid
    """
    return [AttemptRecord(*row) for row in conn.execute(sql, (delivery_id,))]


def get_event(conn: sqlite3.Connection, event_id: str) -> TaskEvent | None:
    row = conn.execute("SELECT event_json FROM events WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else TaskEvent.model_validate_json(row[0])


def quarantine(conn: sqlite3.Connection, callback: QuarantinedCallback) -> None:
    c = callback
    conn.execute(
        "INSERT INTO quarantine (id, source, provider, received_at, reason, body, headers,"
        " query, client_ip, state, event_id, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            c.id,
            c.source,
            c.provider,
            c.received_at,
            c.reason,
            c.body,
            json.dumps(c.headers),
            json.dumps(c.query),
            c.client_ip,
            c.state,
            c.event_id,
            c.updated_at,
        ),
    )


def list_quarantined(
    conn: sqlite3.Connection, limit: int, include_reprocessed: bool
) -> list[QuarantinedCallback]:
    where = "" if include_reprocessed else "WHERE state = 'quarantined'"
    sql = f"{QUARANTINE_COLUMNS} {where} ORDER BY received_at DESC, rowid DESC LIMIT ?"
    return [QuarantinedCallback.from_row(row) for row in conn.execute(sql, (limit,))]


def get_quarantined(conn: sqlite3.Connection, quarantine_id: str) -> QuarantinedCallback | None:
    row = conn.execute(f"{QUARANTINE_COLUMNS} WHERE id = ?", (quarantine_id,)).fetchone()
    return None if row is None else QuarantinedCallback.from_row(row)


def settle_quarantined(
    conn: sqlite3.Connection, quarantine_id: str, event_id: str | None, reason: str, now: float
) -> bool:
    sql = """
        UPDATE quarantine SET state = ?, event_id = ?, reason = ?, updated_at = ?
        WHERE id = ? AND state = 'quarantined'
    """
    state = "quarantined" if event_id is None else "reprocessed"
    return conn.execute(sql, (state, event_id, reason, now, quarantine_id)).rowcount == 1


def replay(
    conn: sqlite3.Connection, delivery_id: str, now: float, states: Sequence[DeliveryState]
) -> bool:
    """``states``: those of REPLAYABLE asked for, at least one."""
    sql = f"""
        UPDATE deliveries
        SET state = 'pending', attempts = 0, next_attempt_at = ?, due_at = ?, updated_at = ?,
            held_by = NULL
        WHERE id = ? AND state IN ({", ".join("?" * len(states))})
    """
    return conn.execute(sql, (now, now, now, delivery_id, *states)).rowcount == 1


def add_silence(conn: sqlite3.Connection, silence: Silence) -> bool:
    sql = (
        "INSERT INTO silences (id, matchers, starts_at, ends_at, comment, created_by, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
    )
    s = silence
    args = (s.id, json.dumps(list(s.matchers)), s.starts_at, s.ends_at, s.comment)
    return conn.execute(sql, (*args, s.created_by, s.created_at)).rowcount == 1


def list_silences(conn: sqlite3.Connection, now: float, include_ended: bool) -> list[Silence]:
    where, args = ("", []) if include_ended else (" WHERE ends_at > ?", [now])
    sql = f"{SILENCE_COLUMNS}{where} ORDER BY ends_at DESC, id DESC"
    return [Silence.from_row(row) for row in conn.execute(sql, args)]


def get_silence(conn: sqlite3.Connection, silence_id: str) -> Silence | None:
    row = conn.execute(f"{SILENCE_COLUMNS} WHERE id = ?", (silence_id,)).fetchone()
    return None if row is None else Silence.from_row(row)


def expire_silence(conn: sqlite3.Connection, silence_id: str, now: float) -> bool:
    sql = "UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?"
    return conn.execute(sql, (now, silence_id, now)).rowcount == 1


def held_counts(conn: sqlite3.Connection) -> dict[str, int]:
    sql = (
        "SELECT held_by, count(*) FROM deliveries INDEXED BY deliveries_held"
        " WHERE state = 'silenced' AND held_by IS NOT NULL GROUP BY held_by"
    )
    return {cast(str, k): cast(int, n) for k, n in conn.execute(sql)}


def release_held(conn: sqlite3.Connection, held_by: str, now: float) -> int:
    sql = """
        UPDATE deliveries
        SET state = 'pending', attempts = 0, next_attempt_at = ?, due_at = ?, updated_at = ?,
            held_by = NULL
        WHERE state = 'silenced' AND held_by = ?
    """
    return conn.execute(sql, (now, now, now, held_by)).rowcount


def group_pending(
    conn: sqlite3.Connection, destination: str, group: str, after: str, limit: int
) -> list[tuple[str, TaskEvent]]:
    sql = """
        SELECT d.id, e.event_json FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
        WHERE d.grp = ? AND d.destination = ? AND d.state = 'pending'
            AND d.rowid > coalesce((SELECT rowid FROM deliveries WHERE id = ?), -1)
        ORDER BY d.rowid
        LIMIT ?
    """
    rows = conn.execute(sql, (group, destination, after, limit)).fetchall()
    return [(cast(str, i), TaskEvent.model_validate_json(cast(str, j))) for i, j in rows]


def fold(conn: sqlite3.Connection, ids: Sequence[str], outcome: Outcome, now: float) -> int:
    conn.execute("BEGIN IMMEDIATE")
    held = outcome.held_by if outcome.state == "silenced" else None
    changed = 0
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = list(ids[start : start + _LOOKUP_CHUNK])
        sql = f"""
            UPDATE deliveries
            SET state = ?, next_attempt_at = NULL, due_at = NULL, last_error = ?,
                updated_at = ?, held_by = ?
            WHERE state = 'pending' AND id IN ({", ".join("?" * len(chunk))})
        """
        changed += conn.execute(sql, [outcome.state, outcome.detail, now, held, *chunk]).rowcount
    conn.execute("COMMIT")
    return changed


def add_deliveries(
    conn: sqlite3.Connection, event_id: str, deliveries: list[NewDelivery], now: float
) -> bool:
    """Created and due ``now``. The rowid (creation order, a group's order) comes after every
    row already there, as an ingest's would."""
    conn.execute("BEGIN IMMEDIATE")
    if conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is None:
        conn.execute("ROLLBACK")
        return False
    rows: list[tuple[object, ...]] = [
        (d.id, event_id, d.destination, d.route, now, now, now, now, d.group) for d in deliveries
    ]
    _insert_rows(conn, _DELIVERIES_INTO, _DELIVERY_ROW, rows)
    conn.execute("COMMIT")
    return True


def release(conn: sqlite3.Connection, claim: Claim, now: float) -> bool:
    """Fenced by the lease token like a finish; the attempt is given back, no attempt row."""
    sql = """
        UPDATE deliveries
        SET state = 'pending', attempts = attempts - 1, next_attempt_at = ?, due_at = ?,
            lease_token = NULL, lease_until = NULL, updated_at = ?
        WHERE id = ? AND state = 'sending' AND lease_token = ?
    """
    args = (now, now, now, claim.delivery_id, claim.lease_token)
    return conn.execute(sql, args).rowcount == 1


# Its WHERE is deliveries_queue's predicate verbatim (SQLite uses a partial index only then):
# an index-only scan, already in GROUP BY order.
QUEUE_DEPTH_SQL = """
    SELECT destination, state, count(*) FROM deliveries
    WHERE state IN ('pending', 'sending', 'dead', 'silenced')
    GROUP BY state, destination
"""
# The due index in due order: the first pending row at or before now is the most overdue.
OLDEST_DUE_SQL = """
    SELECT d.due_at FROM deliveries AS d INDEXED BY deliveries_due
    WHERE d.state IN ('pending', 'sending') AND d.state = 'pending' AND d.due_at <= ?
    ORDER BY d.due_at
    LIMIT 1
"""


def queue_stats(conn: sqlite3.Connection, now: float) -> QueueStats:
    # One read transaction: both figures from the same snapshot.
    conn.execute("BEGIN")
    depth = {(dest, state): count for dest, state, count in conn.execute(QUEUE_DEPTH_SQL)}
    row = conn.execute(OLDEST_DUE_SQL, (now,)).fetchone()
    conn.execute("COMMIT")
    return QueueStats(depth=depth, oldest_due=None if row is None else cast(float, row[0]))


# Of one source, all but the newest ``keep`` (by arrival, then insertion), through the
# (source, received_at, seq) index.
_TRIM_REJECTED = """
    DELETE FROM rejected WHERE seq IN (
        SELECT seq FROM (
            SELECT seq, row_number() OVER (ORDER BY received_at DESC, seq DESC) AS n
            FROM rejected WHERE source = ?
        ) WHERE n > ?
    )
"""
_REJECTED_COLUMNS = """
    SELECT source, received_at, client_ip, path, status, reason, excerpt FROM rejected
"""


def record_rejected(
    conn: sqlite3.Connection, requests: Sequence[RejectedRequest], keep: int
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO rejected (source, received_at, client_ip, path, status, reason, excerpt)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (r.source, r.received_at, r.client_ip, r.path, r.status, r.reason, r.excerpt)
            for r in requests
        ],
    )
    sources = sorted({r.source for r in requests})
    conn.executemany(_TRIM_REJECTED, [(source, keep) for source in sources])
    conn.execute("COMMIT")


def list_rejected(
    conn: sqlite3.Connection, source: str | None, limit: int
) -> list[RejectedRequest]:
    where, args = ("", [limit]) if source is None else ("WHERE source = ?", [source, limit])
    sql = f"{_REJECTED_COLUMNS} {where} ORDER BY received_at DESC, seq DESC LIMIT ?"
    return [RejectedRequest(*row) for row in conn.execute(sql, args)]


def next_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(NEXT_DUE_SQL).fetchone()
    return None if row is None else cast(float, row[0])


def get_state(conn: sqlite3.Connection, destination: str, key: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT value FROM channel_state WHERE destination = ? AND key = ?", (destination, key)
    ).fetchone()
    return None if row is None else cast("dict[str, Any]", json.loads(row[0]))


def put_state(conn: sqlite3.Connection, destination: str, key: str, value: str, now: float) -> None:
    conn.execute(
        "INSERT INTO channel_state (destination, key, value, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (destination, key) DO UPDATE"
        " SET value = excluded.value, updated_at = excluded.updated_at",
        (destination, key, value, now),
    )


def pace(conn: sqlite3.Connection, key: str, interval: float, now: float) -> float:
    """Read and take the slot in one write transaction, so two processes cannot both go."""
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute("SELECT free_at FROM pacing WHERE key = ?", (key,)).fetchone()
    if row is not None and row[0] > now:
        conn.execute("ROLLBACK")
        return cast(float, row[0]) - now
    conn.execute(
        "INSERT INTO pacing (key, free_at) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET free_at = excluded.free_at",
        (key, now + interval),
    )
    conn.execute("COMMIT")
    return 0.0


def data_version(conn: sqlite3.Connection) -> int:
    """SQLite's counter of commits by other connections to the file (ours do not count)."""
    row = conn.execute("PRAGMA data_version").fetchone()
    return int(row[0])
