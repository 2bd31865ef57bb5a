"""The SQL half of the PostgreSQL store: schema, migrations and every statement.

Each function takes a connection from the pool (in autocommit mode: a lone statement is its own
transaction) and opens a transaction itself where it needs more than one statement. Driver
errors propagate; the store turns them into StoreUnavailableError.

The tables mirror SQLite's (``sqlite_queries.py``) with PostgreSQL types: times stay unix seconds
in DOUBLE PRECISION, so every backend hands back exactly the floats it was given, and ``seq``
(BIGSERIAL) is creation order where SQLite uses the rowid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

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

Conn = AsyncConnection[TupleRow]

# The transaction-level advisory lock that serializes migrations across replicas. The two-int4
# form: its key space is apart from the bigint one of the group locks below.
MIGRATION_LOCK_SQL = "SELECT pg_advisory_xact_lock(1380273217, 89)"  # "RELA", "Y"

# gen_random_uuid() (lease tokens) is built in from 13 on.
MIN_SERVER_VERSION = 130000

# Applied in order, each once, recorded in schema_version. Append; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        provider TEXT NOT NULL,
        task_id TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        status TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        -- TEXT, not JSONB: JSONB reorders keys, and the event must read back byte for byte.
        event_json TEXT NOT NULL,
        UNIQUE (source, dedupe_key)
    );
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        -- Creation order: the tie-break everywhere, and the order of a group. A sequence
        -- with CACHE 1 (the default) hands its numbers out in order across sessions.
        seq BIGSERIAL NOT NULL UNIQUE,
        event_id TEXT NOT NULL REFERENCES events (id),
        destination TEXT NOT NULL,
        route INTEGER NOT NULL,
        grp TEXT,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION,
        lease_token TEXT,
        lease_until DOUBLE PRECISION,
        last_error TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        -- next_attempt_at while pending, lease_until while sending: one column, so claiming
        -- is one index range scan whichever way a delivery fell due.
        due_at DOUBLE PRECISION
    );
    CREATE INDEX deliveries_due ON deliveries (due_at, seq)
        WHERE state IN ('pending', 'sending');
    -- The hold-back look-up: the unfinished deliveries of a group. Finished ones leave it, so
    -- it stays as small as the backlog.
    CREATE INDEX deliveries_group ON deliveries (grp, destination, seq)
        WHERE grp IS NOT NULL AND state IN ('pending', 'sending');
    -- For `relay deliveries`, newest first, with and without a state filter.
    CREATE INDEX deliveries_created ON deliveries (created_at, seq);
    CREATE INDEX deliveries_state_created ON deliveries (state, created_at, seq);
    CREATE TABLE attempts (
        seq BIGSERIAL PRIMARY KEY,
        delivery_id TEXT NOT NULL REFERENCES deliveries (id),
        attempt INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id, seq);
    CREATE TABLE channel_state (
        destination TEXT NOT NULL,
        key TEXT NOT NULL,
        value JSONB NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (destination, key)
    );
    CREATE TABLE pacing (
        key TEXT PRIMARY KEY,
        free_at DOUBLE PRECISION NOT NULL
    );
    """,
    # Callbacks no adapter could read, kept for `relay reprocess`; events newest first.
    """
    CREATE TABLE quarantine (
        id TEXT PRIMARY KEY,
        seq BIGSERIAL NOT NULL UNIQUE,
        source TEXT NOT NULL,
        provider TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        body BYTEA NOT NULL,
        headers JSONB NOT NULL,
        query JSONB NOT NULL,
        client_ip TEXT,
        state TEXT NOT NULL CHECK (state IN ('quarantined', 'reprocessed')),
        event_id TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX quarantine_state_received ON quarantine (state, received_at, seq);
    -- Arrival order among events received at the same instant, as SQLite's rowid.
    ALTER TABLE events ADD COLUMN seq BIGSERIAL NOT NULL;
    CREATE INDEX events_received ON events (received_at, seq);
    """,
    # Filtered listings paged by (time, id), queue depth, refused callbacks.
    """
    -- Each common filter of find_events / find_deliveries reads one index in its order, ties
    -- by id included. Ids compare bytewise (COLLATE "C", as SQLite and Python compare them),
    -- whatever the database's collation. These replace the (time, seq) indexes of 1 and 2.
    DROP INDEX deliveries_created;
    DROP INDEX deliveries_state_created;
    DROP INDEX events_received;
    CREATE INDEX deliveries_created_id ON deliveries (created_at, id COLLATE "C");
    CREATE INDEX deliveries_state_created_id ON deliveries (state, created_at, id COLLATE "C");
    CREATE INDEX deliveries_destination_created_id
        ON deliveries (destination, created_at, id COLLATE "C");
    -- A delivery's event: the filter, and retention's look-up of an event's deliveries.
    CREATE INDEX deliveries_event ON deliveries (event_id);
    -- queue_stats at every scrape: covering, and as small as the backlog plus the dead.
    CREATE INDEX deliveries_queue ON deliveries (state, destination)
        WHERE state IN ('pending', 'sending', 'dead');
    CREATE INDEX events_received_id ON events (received_at, id COLLATE "C");
    CREATE INDEX events_source_received_id ON events (source, received_at, id COLLATE "C");
    CREATE INDEX events_task ON events (task_id);
    CREATE TABLE rejected (
        seq BIGSERIAL PRIMARY KEY,
        source TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        client_ip TEXT,
        path TEXT NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL,
        excerpt TEXT NOT NULL
    );
    CREATE INDEX rejected_source_received ON rejected (source, received_at, seq);
    """,
    # Readiness writes: a row rewritten by every ping, so a full disk or a read-only server
    # shows in /readyz, not only in the callbacks' 503s.
    """
    CREATE TABLE heartbeat (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at DOUBLE PRECISION NOT NULL
    );
    """,
    # Silences: the 'silenced' state, and what holds each silenced delivery.
    """
    ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
    ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check
        CHECK (state IN ('pending', 'sending', 'delivered', 'dead', 'silenced'));
    ALTER TABLE deliveries ADD COLUMN held_by TEXT;
    CREATE INDEX deliveries_held ON deliveries (held_by) WHERE state = 'silenced';
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers JSONB NOT NULL,
        starts_at DOUBLE PRECISION NOT NULL,
        ends_at DOUBLE PRECISION NOT NULL,
        comment TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX silences_ends ON silences (ends_at);
    """,
)

# Ingests and replays NOTIFY this channel (delivered at commit); workers LISTEN on it.
NOTIFY_CHANNEL = "relay_due"
NOTIFY_SQL = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"

# Ingest, batched (group commit): one transaction for many callbacks, a few statements whatever
# their number. Group locks: within an ordered group, commit order must be creation (seq)
# order, or a claim could see a later delivery of a group before an earlier one commits, and
# send it first. One transaction-level advisory lock per (group, destination), taken first in
# one sorted order (no deadlock between replicas) and held to the commit. No group, no lock.
#
# The locks an ingest transaction waits on, in the order it takes them, the same in every
# replica, so no two can wait on each other in a cycle:
# 1. the group locks, in hash order, all in this first statement (the aggregate locks the keys
#    as the subquery yields them, sorted: one with DISTINCT and ORDER BY is never flattened);
# 2. the events' unique keys, in (source, dedupe_key) order (BATCH_EVENTS_SQL; their ids are
#    new, so the primary key never waits);
# 3. nothing else: deliveries' ids and seq are new (no other transaction holds them), their
#    foreign key locks events this transaction inserted itself, BATCH_EXISTING_SQL is a plain
#    read, and NOTIFY's queue lock is taken at commit, after every other.
BATCH_LOCKS_SQL = """
    SELECT count(pg_advisory_xact_lock(k)) FROM (
        SELECT DISTINCT hashtextextended(g || chr(31) || d, 0) AS k
        FROM unnest(%(groups)s::text[], %(destinations)s::text[]) AS t (g, d)
        ORDER BY k
    ) AS keys
"""
# Arrays go in binary (%b): in text format every quote of the event JSON is escaped by a
# regular expression on our side, which cost more than the rest of the insert.
# Rows go in in the order given (ingest_batch sorts them by (source, dedupe_key)), explicitly
# so: an insert that meets a key another replica's transaction has just inserted waits for it,
# and two batches inserting overlapping keys in different orders deadlock (issue 16).
BATCH_EVENTS_SQL = """
    INSERT INTO events
        (id, source, provider, task_id, dedupe_key, status, received_at, event_json)
    SELECT n.id, n.source, n.provider, n.task_id, n.dedupe_key, n.status, n.received, n.json
    FROM unnest(%(ids)b::text[], %(sources)b::text[], %(providers)b::text[],
            %(task_ids)b::text[], %(dedupe_keys)b::text[], %(statuses)b::text[],
            %(received)b::float8[], %(jsons)b::text[])
        WITH ORDINALITY
            AS n (id, source, provider, task_id, dedupe_key, status, received, json, ord)
    ORDER BY n.ord
    ON CONFLICT (source, dedupe_key) DO NOTHING
    RETURNING id
"""
BATCH_DELIVERIES_SQL = """
    INSERT INTO deliveries (id, event_id, destination, route, grp, state, attempts,
        next_attempt_at, created_at, updated_at, due_at)
    SELECT n.id, n.event_id, n.destination, n.route, n.grp, 'pending', 0,
        n.received, n.received, n.received, n.received
    FROM unnest(%(ids)b::text[], %(event_ids)b::text[], %(destinations)b::text[],
            %(routes)b::int[], %(groups)b::text[], %(received)b::float8[])
        WITH ORDINALITY AS n (id, event_id, destination, route, grp, received, ord)
    ORDER BY n.ord
"""
# A new statement sees what other replicas committed while our insert waited on their rows.
BATCH_EXISTING_SQL = """
    SELECT e.source, e.dedupe_key, e.id
    FROM unnest(%(sources)b::text[], %(dedupe_keys)b::text[]) AS k (source, dedupe_key)
    JOIN events AS e ON e.source = k.source AND e.dedupe_key = k.dedupe_key
"""

# A delivery of an ordered group waits while an earlier one of its group and destination is
# unfinished: exactly MemoryStore's _held_back.
_NOT_HELD_BACK = """
    (d.grp IS NULL OR NOT EXISTS (
        SELECT 1 FROM deliveries AS p
        WHERE p.grp = d.grp AND p.destination = d.destination AND p.seq < d.seq
            AND p.state IN ('pending', 'sending')))
"""
# One statement: pick the due rows, oldest due first, skipping rows another claimer has locked
# (SKIP LOCKED: workers never wait on each other and never get the same row), and lease them.
# A row another claimer leased after this statement's snapshot is re-checked against the WHERE
# on its new version (its due_at is now in the future) and dropped. The lease token is 122
# random bits from the server's strong random source, 32 hex digits like secrets.token_hex(16).
_DUE = f"""
        SELECT d.id, d.due_at, d.seq, d.destination, d.state, d.updated_at, d.attempts
        FROM deliveries AS d
        WHERE d.state IN ('pending', 'sending') AND d.due_at <= %(now)s AND {_NOT_HELD_BACK}
            AND d.destination <> ALL(%(skip)s::text[])
        ORDER BY d.due_at, d.seq
        LIMIT %(limit)s
        FOR UPDATE OF d SKIP LOCKED
"""


def _leasing(rows: str) -> str:
    """The rest of a claim: lease the rows of CTE ``rows`` (those of _DUE), give each one
    taken over from an expired lease the attempt row its lost attempt never wrote (%(lost)s
    its detail), and answer them."""
    return f"""
    leased AS (
        UPDATE deliveries AS d
        SET state = 'sending', attempts = d.attempts + 1,
            lease_token = replace(gen_random_uuid()::text, '-', ''),
            lease_until = %(until)s, due_at = %(until)s, updated_at = %(now)s
        FROM {rows}
        WHERE d.id = {rows}.id
        RETURNING d.id, d.event_id, d.destination, d.route, d.attempts, d.lease_token,
            {rows}.due_at AS was_due, {rows}.seq
    ), lost AS (
        INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, state, detail)
        SELECT r.id, r.attempts, r.updated_at, r.due_at, 'pending', %(lost)s
        FROM {rows} AS r
        WHERE r.state = 'sending' AND r.id IN (SELECT id FROM leased)
        ORDER BY r.due_at, r.seq
    )
    SELECT l.id, l.destination, l.route, l.attempts, l.lease_token, e.event_json,
        e.id, e.source, e.task_id, e.status, e.received_at
    FROM leased AS l JOIN events AS e ON e.id = l.event_id
    ORDER BY l.was_due, l.seq
"""


CLAIM_SQL = f"WITH due AS ({_DUE}), {_leasing('due')}"
# CLAIM_SQL with caps: no destination in %(capped)s gets more rows than its %(room)s (its
# cap less its leases in force). Run under CLAIM_CAPS_LOCK_SQL, so two claimers never count
# the same free slots.
CLAIM_CAPPED_SQL = f"""
    WITH due AS ({_DUE}), ranked AS (
        SELECT due.*,
            row_number() OVER (PARTITION BY due.destination ORDER BY due.due_at, due.seq) AS n
        FROM due
    ), picked AS (
        SELECT r.id, r.due_at, r.seq, r.state, r.updated_at, r.attempts
        FROM ranked AS r
        LEFT JOIN unnest(%(capped)s::text[], %(room)s::int[]) AS c(destination, room)
            ON c.destination = r.destination
        WHERE c.room IS NULL OR r.n <= c.room
    ), {_leasing("picked")}"""
CLAIM_CAPS_LOCK_SQL = "SELECT pg_advisory_xact_lock(1380272724, 1128362064)"  # "CAPP"
IN_FLIGHT_SQL = """
    SELECT destination, count(*) FROM deliveries
    WHERE state = 'sending' AND due_at > %(now)s AND destination = ANY(%(capped)s::text[])
    GROUP BY destination
"""
NEXT_DUE_SQL = f"""
    SELECT d.due_at FROM deliveries AS d
    WHERE d.state IN ('pending', 'sending') AND {_NOT_HELD_BACK}
    ORDER BY d.due_at
    LIMIT 1
"""
# Fenced by the lease token; a deferred outcome gives its attempt back and writes no attempt
# row. One statement, so one transaction.
# Many outcomes in one statement (and one commit): each row is fenced by its own lease token,
# so one whose lease was lost changes nothing while the others are recorded. Attempt rows go in
# the order given (attempts.seq orders them).
FINISH_BATCH_SQL = """
    WITH input AS (
        SELECT * FROM unnest(
            %(ids)b::text[], %(tokens)b::text[], %(states)b::text[], %(retry_ats)b::float8[],
            %(details)b::text[], %(nows)b::float8[], %(deferred)b::bool[], %(attempts)b::int[],
            %(started_ats)b::float8[], %(held_bys)b::text[]
        ) WITH ORDINALITY
            AS i (id, token, state, retry_at, detail, now, deferred, attempt, started_at,
                held_by, ord)
    ), done AS (
        UPDATE deliveries AS d
        SET state = i.state, next_attempt_at = i.retry_at, due_at = i.retry_at,
            lease_token = NULL, lease_until = NULL, last_error = i.detail, updated_at = i.now,
            attempts = d.attempts - CASE WHEN i.deferred THEN 1 ELSE 0 END,
            held_by = i.held_by
        FROM input AS i
        WHERE d.id = i.id AND d.state = 'sending' AND d.lease_token = i.token
        RETURNING d.id, i.token
    ), attempt AS (
        INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, state, detail)
        SELECT i.id, i.attempt, i.started_at, i.now, i.state, i.detail
        FROM input AS i JOIN done ON done.id = i.id AND done.token = i.token
        WHERE NOT i.deferred
        ORDER BY i.ord
    )
    SELECT id, token FROM done
"""
REPLAY_SQL = f"""
    WITH replayed AS (
        UPDATE deliveries
        SET state = 'pending', attempts = 0, next_attempt_at = %(now)s, due_at = %(now)s,
            updated_at = %(now)s, held_by = NULL
        WHERE id = %(id)s AND state = ANY(%(states)s::text[])
        RETURNING id
    )
    SELECT pg_notify('{NOTIFY_CHANNEL}', id) FROM replayed
"""
# Fenced by the lease token like a finish; the attempt is given back and no attempt row
# written. The delivery is due at once: wake the workers.
RELEASE_SQL = f"""
    WITH released AS (
        UPDATE deliveries
        SET state = 'pending', attempts = attempts - 1, next_attempt_at = %(now)s,
            due_at = %(now)s, lease_token = NULL, lease_until = NULL, updated_at = %(now)s
        WHERE id = %(id)s AND state = 'sending' AND lease_token = %(token)s
        RETURNING id
    )
    SELECT pg_notify('{NOTIFY_CHANNEL}', id) FROM released
"""
# The event row locked against deletion (retention) until the deliveries are in.
EVENT_KEY_SHARE_SQL = "SELECT 1 FROM events WHERE id = %s FOR KEY SHARE"
# The WHERE implies deliveries_queue's predicate: an index-only scan of the backlog and the
# dead, never of the delivered history.
QUEUE_DEPTH_SQL = """
    SELECT destination, state, count(*) FROM deliveries
    WHERE state IN ('pending', 'sending', 'dead')
    GROUP BY state, destination
    UNION ALL
    SELECT destination, state, count(*) FROM deliveries
    WHERE state = 'silenced'
    GROUP BY state, destination
"""
# The due index in due order: the first pending row at or before now is the most overdue.
OLDEST_DUE_SQL = """
    SELECT due_at FROM deliveries
    WHERE state IN ('pending', 'sending') AND state = 'pending' AND due_at <= %s
    ORDER BY due_at
    LIMIT 1
"""
# Per source of a batch of refused callbacks, one lock (two-int4 form, a key space of its
# own), taken in one sorted order: batches of two replicas trim one after the other, so each
# source keeps exactly its newest ``keep``.
REJECTED_LOCKS_SQL = """
    SELECT count(pg_advisory_xact_lock(1380272724, k)) FROM (
        SELECT DISTINCT hashtext(s) AS k FROM unnest(%(sources)s::text[]) AS t (s) ORDER BY k
    ) AS keys
"""
INSERT_REJECTED_SQL = """
    INSERT INTO rejected (source, received_at, client_ip, path, status, reason, excerpt)
    SELECT n.source, n.received_at, n.client_ip, n.path, n.status, n.reason, n.excerpt
    FROM unnest(%(sources)s::text[], %(received)s::float8[], %(ips)s::text[],
            %(paths)s::text[], %(statuses)s::int[], %(reasons)s::text[], %(excerpts)s::text[])
        WITH ORDINALITY
            AS n (source, received_at, client_ip, path, status, reason, excerpt, ord)
    ORDER BY n.ord
"""
# Of each source given, all but the newest ``keep`` (by arrival, then insertion).
TRIM_REJECTED_SQL = """
    DELETE FROM rejected WHERE seq IN (
        SELECT seq FROM (
            SELECT seq, row_number() OVER (
                PARTITION BY source ORDER BY received_at DESC, seq DESC) AS n
            FROM rejected WHERE source = ANY(%(sources)s::text[])
        ) AS ranked
        WHERE n > %(keep)s
    )
"""
_REJECTED_COLUMNS = """
    SELECT source, received_at, client_ip, path, status, reason, excerpt FROM rejected
"""
_RECORD_COLUMNS = """
    SELECT d.id, d.event_id, e.source, e.task_id, e.status, d.destination, d.route, d.state,
        d.attempts, d.next_attempt_at, d.last_error, d.created_at, d.updated_at
    FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
"""
# The slot is taken only if it is free (its free_at has passed): the conflict arm locks the row
# and re-reads its latest version, so two processes cannot both take it. If it was not taken,
# the second arm reads when it frees (from this statement's snapshot: see pace()).
PACE_SQL = """
    WITH took AS (
        INSERT INTO pacing AS p (key, free_at) VALUES (%(key)s, %(free_at)s)
        ON CONFLICT (key) DO UPDATE SET free_at = EXCLUDED.free_at
        WHERE p.free_at <= %(now)s
        RETURNING free_at
    )
    SELECT true, free_at FROM took
    UNION ALL
    SELECT false, free_at FROM pacing WHERE key = %(key)s AND NOT EXISTS (SELECT 1 FROM took)
"""
PUT_STATE_SQL = """
    INSERT INTO channel_state (destination, key, value, updated_at) VALUES (%s, %s, %s, %s)
    ON CONFLICT (destination, key) DO UPDATE
    SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
"""
# A write a read-only transaction or a standby refuses, that changes nothing.
# A real write, committed: fails on a read-only, full or unreachable server, as ingest would.
PING_SQL = """
    INSERT INTO heartbeat (id, at) VALUES (1, extract(epoch FROM clock_timestamp()))
    ON CONFLICT (id) DO UPDATE SET at = excluded.at
"""


async def migrate(conn: Conn) -> None:
    """Apply the missing migrations in one transaction.

    The advisory lock makes replicas that start together take turns: the first applies, the
    others wait for its commit, then find nothing left to do. (IF NOT EXISTS alone is not
    enough: of two sessions creating one table at once, one can fail on the catalog's unique
    index, and a half-applied list of migrations would be worse.)
    """
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise StoreUnavailableError(
            f"store: open: PostgreSQL {conn.info.server_version // 10000} is too old; "
            f"relay needs {MIN_SERVER_VERSION // 10000} or newer"
        )
    async with conn.transaction():
        await conn.execute(MIGRATION_LOCK_SQL)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        current = int(row[0]) if row is not None else 0
        if current > len(MIGRATIONS):
            raise StoreUnavailableError(
                f"store: open: database schema version {current} is newer than this relay "
                f"({len(MIGRATIONS)})"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            # No parameters: psycopg sends the script as one simple query, statements and all.
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))


async def ping(conn: Conn) -> None:
    await conn.execute(PING_SQL)


class IngestItem(NamedTuple):
    """One callback's event (serialized already) and its deliveries."""

    event: TaskEvent
    event_json: str
    deliveries: list[NewDelivery]


async def ingest_batch(conn: Conn, batch: list[IngestItem]) -> list[IngestResult]:
    """Store a batch of events and their deliveries in one transaction, or none of it.

    Events whose (source, dedupe_key) is already stored, by an earlier row, another replica
    or an earlier item of this batch, come back as duplicates of that event, with no
    deliveries. Any other failure (an id clash: a bug) fails the whole batch; the caller then
    stores the items one by one so only the offending one is refused.
    """
    async with conn.transaction():
        groups = [(d.group, d.destination) for i in batch for d in i.deliveries if d.group]
        if groups:
            await conn.execute(
                BATCH_LOCKS_SQL,
                {"groups": [g for g, _ in groups], "destinations": [d for _, d in groups]},
            )
        events = [i.event for i in batch]
        # The unique keys' order, the same in every replica (see BATCH_LOCKS_SQL). Stable: of
        # two items of the batch with one key, the earlier is inserted first and wins.
        ordered = sorted(batch, key=lambda i: (i.event.source, i.event.dedupe_key))
        cur = await conn.execute(
            BATCH_EVENTS_SQL,
            {
                "ids": [i.event.id for i in ordered],
                "sources": [i.event.source for i in ordered],
                "providers": [i.event.provider for i in ordered],
                "task_ids": [i.event.task_id for i in ordered],
                "dedupe_keys": [i.event.dedupe_key for i in ordered],
                "statuses": [i.event.status for i in ordered],
                "received": [i.event.received_at.timestamp() for i in ordered],
                "jsons": [i.event_json for i in ordered],
            },
        )
        stored = {row[0] for row in await cur.fetchall()}
        # Deliveries in arrival order: seq is creation order, the order of a group.
        new = [i for i in batch if i.event.id in stored]
        rows = [(d, i.event) for i in new for d in i.deliveries]
        if rows:
            await conn.execute(
                BATCH_DELIVERIES_SQL,
                {
                    "ids": [d.id for d, _ in rows],
                    "event_ids": [e.id for _, e in rows],
                    "destinations": [d.destination for d, _ in rows],
                    "routes": [d.route for d, _ in rows],
                    "groups": [d.group for d, _ in rows],
                    "received": [e.received_at.timestamp() for _, e in rows],
                },
            )
            await conn.execute(NOTIFY_SQL)
        known: dict[tuple[str, str], str] = {}
        others = [i.event for i in batch if i.event.id not in stored]
        if others:
            cur = await conn.execute(
                BATCH_EXISTING_SQL,
                {
                    "sources": [e.source for e in others],
                    "dedupe_keys": [e.dedupe_key for e in others],
                },
            )
            known = {(source, key): event_id for source, key, event_id in await cur.fetchall()}
    results = []
    for event in events:
        if event.id in stored:
            results.append(IngestResult(event_id=event.id, duplicate=False))
            continue
        existing = known.get((event.source, event.dedupe_key))
        if existing is None:
            # Retention pruned the old event between our insert's conflict and this look-up
            # (it is over an hour old): a 503 makes the provider retry, and the retry is
            # stored as new, as it would have been a moment later.
            raise StoreUnavailableError("store: ingest: the duplicated event was just pruned")
        results.append(IngestResult(event_id=existing, duplicate=True))
    return results


async def claim(
    conn: Conn,
    *,
    now: float,
    limit: int,
    lease: float,
    skip: Sequence[str] = (),
    caps: Mapping[str, int] | None = None,
    quota: Mapping[str, int] | None = None,
) -> list[Claim]:
    """Lease due deliveries, none to a destination in ``skip``, none past a destination's
    cap (counted with every replica's leases) or its quota (this call's)."""
    lease_until = now + lease
    params: dict[str, object] = {
        "now": now,
        "limit": limit,
        "until": lease_until,
        "lost": LOST_ATTEMPT,
    }
    if not caps and not quota:
        cur = await conn.execute(CLAIM_SQL, {**params, "skip": list(skip)})
        return _claims(await cur.fetchall(), lease_until)
    room = dict(caps or {})
    claims: list[Claim] = []
    async with conn.transaction():
        if caps:
            # Shared caps are counted under one lock; a quota is this caller's alone.
            await conn.execute(CLAIM_CAPS_LOCK_SQL)
            cur = await conn.execute(IN_FLIGHT_SQL, {"now": now, "capped": list(room)})
            for destination, leased in await cur.fetchall():
                room[destination] -= leased
        room = with_quota(room, quota)
        # As in SQLite's claim: full destinations are left out of the window; one that
        # fills up within it has its extra rows left (unlocked at commit) and the window
        # is read again, at most once per capped destination.
        while len(claims) < limit:
            full = [d for d, r in room.items() if r <= 0]
            open_ = [d for d, r in room.items() if r > 0]
            cur = await conn.execute(
                CLAIM_CAPPED_SQL,
                {
                    **params,
                    "limit": limit - len(claims),
                    "skip": [*skip, *full],
                    "capped": open_,
                    "room": [room[d] for d in open_],
                },
            )
            batch = _claims(await cur.fetchall(), lease_until)
            claims.extend(batch)
            for c in batch:
                if c.destination in room:
                    room[c.destination] -= 1
            filled = any(room[d] <= 0 for d in open_)
            if not filled or len(batch) == 0:
                break
    return claims


def _claims(rows: Sequence[TupleRow], lease_until: float) -> list[Claim]:
    return [
        Claim(
            delivery_id=delivery_id,
            event_data=StoredEvent.from_row(
                event_json,
                id=event_id,
                source=source,
                task_id=task_id,
                status=status,
                received_at=received_at,
            ),
            destination=destination,
            route=route,
            attempt=attempt,
            lease_token=token,
            lease_until=lease_until,
        )
        for (
            delivery_id,
            destination,
            route,
            attempt,
            token,
            event_json,
            event_id,
            source,
            task_id,
            status,
            received_at,
        ) in rows
    ]


class FinishItem(NamedTuple):
    """One attempt's outcome to record."""

    claim: Claim
    outcome: Outcome
    retry_at: float | None
    started_at: float
    now: float


async def finish_batch(conn: Conn, batch: list[FinishItem]) -> list[bool]:
    """Record a batch of outcomes in one statement; for each, whether its lease still held."""
    cur = await conn.execute(
        FINISH_BATCH_SQL,
        {
            "ids": [i.claim.delivery_id for i in batch],
            "tokens": [i.claim.lease_token for i in batch],
            "states": [i.outcome.state for i in batch],
            "retry_ats": [i.retry_at for i in batch],
            "details": [i.outcome.detail for i in batch],
            "nows": [i.now for i in batch],
            "deferred": [i.outcome.deferred for i in batch],
            "attempts": [i.claim.attempt for i in batch],
            "started_ats": [i.started_at for i in batch],
            "held_bys": [
                i.outcome.held_by if i.outcome.state == "silenced" else None for i in batch
            ],
        },
    )
    kept = {(row[0], row[1]) for row in await cur.fetchall()}
    return [(i.claim.delivery_id, i.claim.lease_token) in kept for i in batch]


def _record(row: TupleRow) -> DeliveryRecord:
    (id_, event_id, source, task_id, status, dest, route, state, attempts, nxt, err, ca, ua) = row
    return DeliveryRecord(
        id=id_,
        event_id=event_id,
        source=source,
        task_id=task_id,
        status=status,
        destination=dest,
        route=route,
        state=cast(DeliveryState, state),  # the table's CHECK constraint guarantees it
        attempts=attempts,
        next_attempt_at=nxt,
        last_error=err,
        created_at=ca,
        updated_at=ua,
    )


def _where(
    terms: list[tuple[str, object]], after: str, before: Cursor | None
) -> tuple[str, list[object]]:
    """``terms`` whose value is not None, and the cursor's row comparison ``after`` (an index
    range of the (time, id) index), ANDed."""
    sql = [term for term, value in terms if value is not None]
    args = [value for _, value in terms if value is not None]
    if before is not None:
        sql.append(after)
        args.extend(before)
    return ("WHERE " + " AND ".join(sql) if sql else ""), args


def _delivery_where(where: DeliveryFilter, before: Cursor | None) -> tuple[str, list[object]]:
    terms: list[tuple[str, object]] = [
        ("d.state = %s", where.state),
        ("d.destination = %s", where.destination),
        ("d.event_id = %s", where.event_id),
        ("d.created_at >= %s", where.since),
        ("d.created_at < %s", where.until),
    ]
    return _where(terms, '(d.created_at, d.id COLLATE "C") < (%s, %s)', before)


def find_deliveries_query(
    where: DeliveryFilter, limit: int, before: Cursor | None
) -> tuple[str, list[object]]:
    """The statement of ``find_deliveries`` and its arguments (tests read its plan)."""
    clause, args = _delivery_where(where, before)
    sql = f'{_RECORD_COLUMNS} {clause} ORDER BY d.created_at DESC, d.id COLLATE "C" DESC LIMIT %s'
    return sql, [*args, limit]


async def find_deliveries(
    conn: Conn, *, where: DeliveryFilter, limit: int, before: Cursor | None
) -> list[DeliveryRecord]:
    sql, args = find_deliveries_query(where, limit, before)
    cur = await conn.execute(sql, args)
    return [_record(row) for row in await cur.fetchall()]


async def count_deliveries(conn: Conn, *, where: DeliveryFilter) -> int:
    clause, args = _delivery_where(where, None)
    row = await (
        await conn.execute(f"SELECT count(*) FROM deliveries AS d {clause}", args)
    ).fetchone()
    return 0 if row is None else int(row[0])


def find_events_query(
    where: EventFilter, limit: int, before: Cursor | None
) -> tuple[str, list[object]]:
    """The statement of ``find_events`` and its arguments (tests read its plan)."""
    terms: list[tuple[str, object]] = [
        ("e.source = %s", where.source),
        ("e.provider = %s", where.provider),
        ("e.status = %s", where.status),
        ("e.task_id = %s", where.task_id),
        # Read from the stored event rather than a column of its own: the ingest path
        # writes nothing more for a filter that only listings use.
        ("(e.event_json::jsonb ->> 'model') = %s", where.model),
        ("e.received_at >= %s", where.since),
        ("e.received_at < %s", where.until),
        # Names are checked by EventFilter: plain identifiers, safe as JSON keys here.
        *((f"(e.event_json::jsonb -> 'labels' ->> '{name}') = %s", v) for name, v in where.labels),
    ]
    clause, args = _where(terms, '(e.received_at, e.id COLLATE "C") < (%s, %s)', before)
    sql = f"""
        SELECT e.event_json FROM events AS e {clause}
        ORDER BY e.received_at DESC, e.id COLLATE "C" DESC LIMIT %s
    """
    return sql, [*args, limit]


async def find_events(
    conn: Conn, *, where: EventFilter, limit: int, before: Cursor | None
) -> list[TaskEvent]:
    sql, args = find_events_query(where, limit, before)
    cur = await conn.execute(sql, args)
    return [TaskEvent.model_validate_json(row[0]) for row in await cur.fetchall()]


async def get_delivery(conn: Conn, *, delivery_id: str) -> DeliveryRecord | None:
    cur = await conn.execute(f"{_RECORD_COLUMNS} WHERE d.id = %s", (delivery_id,))
    row = await cur.fetchone()
    return None if row is None else _record(row)


async def attempts(conn: Conn, *, delivery_id: str) -> list[AttemptRecord]:
    cur = await conn.execute(
        "SELECT delivery_id, attempt, started_at, finished_at, state, detail"
        " FROM attempts WHERE delivery_id = %s ORDER BY seq",
        (delivery_id,),
    )
    return [AttemptRecord(*row) for row in await cur.fetchall()]


async def get_event(conn: Conn, *, event_id: str) -> TaskEvent | None:
    cur = await conn.execute("SELECT event_json FROM events WHERE id = %s", (event_id,))
    row = await cur.fetchone()
    return None if row is None else TaskEvent.model_validate_json(row[0])


async def replay(
    conn: Conn, *, delivery_id: str, now: float, states: Sequence[DeliveryState]
) -> bool:
    params = {"id": delivery_id, "now": now, "states": list(states)}
    cur = await conn.execute(REPLAY_SQL, params)
    return len(await cur.fetchall()) == 1


async def add_silence(conn: Conn, *, silence: Silence) -> bool:
    sql = """
        INSERT INTO silences (id, matchers, starts_at, ends_at, comment, created_by, created_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING
    """
    s = silence
    args = (s.id, Jsonb(list(s.matchers)), s.starts_at, s.ends_at, s.comment)
    cur = await conn.execute(sql, (*args, s.created_by, s.created_at))
    return cur.rowcount == 1


async def list_silences(conn: Conn, *, now: float, include_ended: bool) -> list[Silence]:
    where, args = ("", ()) if include_ended else (" WHERE ends_at > %s", (now,))
    cur = await conn.execute(f"{SILENCE_COLUMNS}{where} ORDER BY ends_at DESC, id DESC", args)
    return [Silence.from_row(row) for row in await cur.fetchall()]


async def get_silence(conn: Conn, *, silence_id: str) -> Silence | None:
    cur = await conn.execute(f"{SILENCE_COLUMNS} WHERE id = %s", (silence_id,))
    row = await cur.fetchone()
    return None if row is None else Silence.from_row(row)


async def expire_silence(conn: Conn, *, silence_id: str, now: float) -> bool:
    sql = "UPDATE silences SET ends_at = %s WHERE id = %s AND ends_at > %s"
    cur = await conn.execute(sql, (now, silence_id, now))
    return cur.rowcount == 1


async def held_counts(conn: Conn) -> dict[str, int]:
    cur = await conn.execute(
        "SELECT held_by, count(*) FROM deliveries"
        " WHERE state = 'silenced' AND held_by IS NOT NULL GROUP BY held_by"
    )
    return {cast(str, k): cast(int, n) for k, n in await cur.fetchall()}


RELEASE_HELD_SQL = f"""
    WITH released AS (
        UPDATE deliveries
        SET state = 'pending', attempts = 0, next_attempt_at = %(now)s, due_at = %(now)s,
            updated_at = %(now)s, held_by = NULL
        WHERE state = 'silenced' AND held_by = %(held_by)s
        RETURNING id
    ), woken AS (SELECT pg_notify('{NOTIFY_CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM released))
    SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM woken)
"""


async def release_held(conn: Conn, *, held_by: str, now: float) -> int:
    cur = await conn.execute(RELEASE_HELD_SQL, {"held_by": held_by, "now": now})
    row = await cur.fetchone()
    return 0 if row is None else cast(int, row[0])


async def group_pending(
    conn: Conn, *, destination: str, group: str, after: str, limit: int
) -> list[tuple[str, TaskEvent]]:
    sql = """
        SELECT d.id, e.event_json FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
        WHERE d.grp = %(group)s AND d.destination = %(destination)s AND d.state = 'pending'
            AND d.seq > coalesce((SELECT seq FROM deliveries WHERE id = %(after)s), -1)
        ORDER BY d.seq
        LIMIT %(limit)s
    """
    params = {"group": group, "destination": destination, "after": after, "limit": limit}
    cur = await conn.execute(sql, params)
    return [(i, TaskEvent.model_validate_json(j)) for i, j in await cur.fetchall()]


async def fold(conn: Conn, *, ids: Sequence[str], outcome: Outcome, now: float) -> int:
    sql = """
        UPDATE deliveries
        SET state = %(state)s, next_attempt_at = NULL, due_at = NULL, last_error = %(detail)s,
            updated_at = %(now)s, held_by = %(held_by)s
        WHERE state = 'pending' AND id = ANY(%(ids)s::text[])
    """
    held = outcome.held_by if outcome.state == "silenced" else None
    params = {"state": outcome.state, "detail": outcome.detail, "now": now, "held_by": held}
    cur = await conn.execute(sql, {**params, "ids": list(ids)})
    return cur.rowcount


async def add_deliveries(
    conn: Conn, *, event_id: str, deliveries: list[NewDelivery], now: float
) -> bool:
    """Created and due ``now``, in one transaction with the group locks of an ingest (so a
    group's commit order is its creation order here too)."""
    async with conn.transaction():
        groups = [(d.group, d.destination) for d in deliveries if d.group]
        if groups:
            await conn.execute(
                BATCH_LOCKS_SQL,
                {"groups": [g for g, _ in groups], "destinations": [d for _, d in groups]},
            )
        if await (await conn.execute(EVENT_KEY_SHARE_SQL, (event_id,))).fetchone() is None:
            return False
        if deliveries:
            await conn.execute(
                BATCH_DELIVERIES_SQL,
                {
                    "ids": [d.id for d in deliveries],
                    "event_ids": [event_id] * len(deliveries),
                    "destinations": [d.destination for d in deliveries],
                    "routes": [d.route for d in deliveries],
                    "groups": [d.group for d in deliveries],
                    "received": [now] * len(deliveries),
                },
            )
            await conn.execute(NOTIFY_SQL)
    return True


async def release(conn: Conn, *, claim: Claim, now: float) -> bool:
    params = {"id": claim.delivery_id, "token": claim.lease_token, "now": now}
    cur = await conn.execute(RELEASE_SQL, params)
    return len(await cur.fetchall()) == 1


async def queue_stats(conn: Conn, *, now: float) -> QueueStats:
    cur = await conn.execute(QUEUE_DEPTH_SQL)
    depth = {(dest, state): count for dest, state, count in await cur.fetchall()}
    row = await (await conn.execute(OLDEST_DUE_SQL, (now,))).fetchone()
    return QueueStats(depth=depth, oldest_due=None if row is None else cast(float, row[0]))


async def record_rejected(conn: Conn, *, requests: Sequence[RejectedRequest], keep: int) -> None:
    sources = sorted({r.source for r in requests})
    async with conn.transaction():
        await conn.execute(REJECTED_LOCKS_SQL, {"sources": sources})
        await conn.execute(
            INSERT_REJECTED_SQL,
            {
                "sources": [r.source for r in requests],
                "received": [r.received_at for r in requests],
                "ips": [r.client_ip for r in requests],
                "paths": [r.path for r in requests],
                "statuses": [r.status for r in requests],
                "reasons": [r.reason for r in requests],
                "excerpts": [r.excerpt for r in requests],
            },
        )
        await conn.execute(TRIM_REJECTED_SQL, {"sources": sources, "keep": keep})


async def list_rejected(conn: Conn, *, source: str | None, limit: int) -> list[RejectedRequest]:
    if source is None:
        cur = await conn.execute(
            f"{_REJECTED_COLUMNS} ORDER BY received_at DESC, seq DESC LIMIT %s", (limit,)
        )
    else:
        cur = await conn.execute(
            f"{_REJECTED_COLUMNS} WHERE source = %s ORDER BY received_at DESC, seq DESC LIMIT %s",
            (source, limit),
        )
    return [RejectedRequest(*row) for row in await cur.fetchall()]


async def next_due(conn: Conn) -> float | None:
    row = await (await conn.execute(NEXT_DUE_SQL)).fetchone()
    return None if row is None else cast(float, row[0])


async def get_state(conn: Conn, *, destination: str, key: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT value FROM channel_state WHERE destination = %s AND key = %s", (destination, key)
    )
    row = await cur.fetchone()
    return None if row is None else cast("dict[str, Any]", row[0])


async def put_state(
    conn: Conn, *, destination: str, key: str, value: dict[str, Any], now: float
) -> None:
    await conn.execute(PUT_STATE_SQL, (destination, key, Jsonb(value), now))


async def pace(conn: Conn, *, key: str, interval: float, now: float) -> float:
    """Take the slot if it is free, in one statement; else how long until it frees."""
    params = {"key": key, "free_at": now + interval, "now": now}
    # The second arm reads the statement's snapshot, which can miss a row another process
    # inserted or moved while our insert waited on it; then the next try sees it. A slot only
    # moves forward, so the loop ends at once in practice.
    for _ in range(5):
        row = await (await conn.execute(PACE_SQL, params)).fetchone()
        if row is not None:
            taken, free_at = row
            if taken:
                return 0.0
            if free_at > now:
                return cast(float, free_at) - now
    # Still nothing consistent: not taken, so never 0.0. Ask again a moment later.
    return 0.01


async def quarantine(conn: Conn, *, callback: QuarantinedCallback) -> None:
    c = callback
    await conn.execute(
        "INSERT INTO quarantine (id, source, provider, received_at, reason, body, headers,"
        " query, client_ip, state, event_id, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            c.id,
            c.source,
            c.provider,
            c.received_at,
            c.reason,
            c.body,
            Jsonb(c.headers),
            Jsonb(c.query),
            c.client_ip,
            c.state,
            c.event_id,
            c.updated_at,
        ),
    )


async def list_quarantined(
    conn: Conn, *, limit: int, include_reprocessed: bool
) -> list[QuarantinedCallback]:
    where = "" if include_reprocessed else "WHERE state = 'quarantined'"
    sql = f"{QUARANTINE_COLUMNS} {where} ORDER BY received_at DESC, seq DESC LIMIT %s"
    cur = await conn.execute(sql, (limit,))
    return [QuarantinedCallback.from_row(row) for row in await cur.fetchall()]


async def get_quarantined(conn: Conn, *, quarantine_id: str) -> QuarantinedCallback | None:
    cur = await conn.execute(f"{QUARANTINE_COLUMNS} WHERE id = %s", (quarantine_id,))
    row = await cur.fetchone()
    return None if row is None else QuarantinedCallback.from_row(row)


async def settle_quarantined(
    conn: Conn, *, quarantine_id: str, event_id: str | None, reason: str, now: float
) -> bool:
    cur = await conn.execute(
        "UPDATE quarantine SET state = %s, event_id = %s, reason = %s, updated_at = %s"
        " WHERE id = %s AND state = 'quarantined'",
        (
            "quarantined" if event_id is None else "reprocessed",
            event_id,
            reason,
            now,
            quarantine_id,
        ),
    )
    return cur.rowcount == 1
