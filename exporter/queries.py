"""Every SQL statement the exporter runs, and the mapping of their rows to domain values.

All statements are named, parameterised and read-only. The refresher runs the ``REFRESH``
statements inside one REPEATABLE READ transaction, so one refresh sees one snapshot of the
database; ``/engines`` runs ``ENGINES_PAGE*`` (and ``ENGINES_COUNT*`` when no fresh snapshot
knows the total); ``check`` runs the schema statements.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from exporter.audit import AuditRow, DbSnapshot
from exporter.checkpoint import DataIdentity
from exporter.db import Statement, Transaction, timeout_ms
from exporter.domain import (
    ENGINE_LISTING_FIELDS,
    EngineGroup,
    EngineRecord,
    Product,
    quota_from_policy,
)
from exporter.loopguard import Pace, no_pace
from exporter.sqlfiles import recommended_indexes

_REPLICATION = """
    pg_is_in_recovery(),
    CASE WHEN NOT pg_is_in_recovery()
           OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
         ELSE coalesce(greatest(0, extract(epoch FROM
                  clock_timestamp() - pg_last_xact_replay_timestamp())), 0) END
"""
"""Whether the server is a standby, and its replication lag in seconds: the age of the last
transaction replayed while WAL received is still waiting for replay (an idle primary is no
lag); 0 on a primary."""

SNAPSHOT = Statement(
    "snapshot",
    f"""
    SELECT now(),
           CASE WHEN pg_is_in_recovery() THEN pg_last_xact_replay_timestamp()
                ELSE clock_timestamp() END,
           pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
           {_REPLICATION}
    """,
)
"""The first statement of a refresh, which takes its snapshot: the snapshot's ``xmin``, the
*gap clock* read after it (``clock_timestamp()`` on a primary; on a hot standby the commit
time of the last transaction replayed, which stops when replay stops, so a paused replay can
never age a gap), and the replication lag (0 on a primary, and on a standby that has
replayed all it received)."""

REPLICATION = Statement("replication", f"SELECT {_REPLICATION}")

TRANSACTION_STATEMENT_TIMEOUT = Statement(
    "transaction_statement_timeout", "SELECT set_config('statement_timeout', %(ms)s, true)"
)
"""The statement timeout of the rest of this transaction only (``is_local``)."""

NEXT_XID = Statement(
    "next_xid",
    """
    SELECT CASE WHEN mod(s.xmax, 4294967296) >= 3
                THEN s.xmax + age(mod(s.xmax, 4294967296)::text::xid) END
    FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) AS s
    """,
)
"""The next transaction id to be assigned, read after the gap clock (a statement of its
own, so the order is certain). ``age(xid)`` measures from the next id (read once per
transaction, at its first call) in a transaction that has no id of its own, as this
read-only one never has; on a standby it is the next id replay has reached. Ids 0-2 are
special and have no age, so on the rare refresh whose ``xmax`` wraps onto one of them the
next id is left unknown."""

PRODUCTS = Statement(
    "products",
    """
    SELECT id::text, slug, display_name, lower(api_key_hash), (policy -> 'max_engines')::text
    FROM products
    ORDER BY slug
    """,
)
"""``->`` on a policy that is not an object (an array, a scalar) is NULL, never an error.
The quota comes as JSON text, decoded once per distinct value: thousands of products share
a handful of policies."""

ENGINE_COUNTS = Statement(
    "engine_counts",
    """
    SELECT product_id::text, status, count(*),
           min(created_at) FILTER (WHERE status = 'provisioning')
    FROM engines
    GROUP BY product_id, status
    """,
)

ENGINE_CENSUS = Statement(
    "engine_census",
    """
    SELECT product_id::text, status, engine_version, count(*), min(created_at),
           count(*) FILTER (WHERE last_health_at IS NULL OR last_health_at < %(probed_before)s),
           min(last_health_at)
    FROM engines
    GROUP BY product_id, status, engine_version
    """,
)
"""Everything ``engine_counts`` gives plus versions and probe figures, in one pass over the
rows. ``last_health_at`` is deliberately in no index: the health loop rewrites it every 30 s,
and an index on it would turn those HOT updates into index writes. So this statement reads
the heap (a refresh with it costs about 1.2x one without it at 1M engines, ``make bench``)
and runs only every ``refresh.engine_census_interval_s``, in place of ``engine_counts``."""

AUDIT_ID_BOUNDS = Statement("audit_id_bounds", "SELECT min(id), max(id) FROM audit_log")

_IN_CHUNK = "id BETWEEN %(lo)s AND %(hi)s"
"""Every backfill statement reads one id range of the primary key: a bounded index range."""

AUDIT_CHUNK_TOTALS = Statement(
    "audit_chunk_totals",
    f"""
    SELECT product_id::text, action, count(*),
           CASE WHEN action = ANY(%(boot_actions)s) AND duration_ms IS NOT NULL
                THEN width_bucket(duration_ms, %(thresholds_ms)s::int[]) END AS bucket,
           coalesce(sum(duration_ms) FILTER (WHERE action = ANY(%(boot_actions)s)), 0),
           count(*) FILTER (WHERE timestamp > %(since)s)
    FROM audit_log
    WHERE {_IN_CHUNK}
    GROUP BY 1, 2, 4
    """,
)
"""The one statement every chunk runs, and the one pass over its range in most: the totals
per product and action with the boot histogram, plus what tells whether the other chunk
statements can find anything (every visible row, system rows included, is in some group, so
the groups' counts say whether ids are missing; the rows inside the rolling window)."""

AUDIT_CHUNK_MISSING_IDS = Statement(
    "audit_chunk_missing_ids",
    f"""
    SELECT hole.lo, hole.hi
    FROM (SELECT id,
                 lag(id, 1, %(lo)s::bigint - 1) OVER w AS previous_id,
                 lead(id, 1, %(hi)s::bigint + 1) OVER w AS next_id
          FROM audit_log
          WHERE {_IN_CHUNK}
          WINDOW w AS (ORDER BY id)) AS present
    CROSS JOIN LATERAL (VALUES (previous_id + 1, id - 1, previous_id = %(lo)s::bigint - 1),
                               (id + 1, next_id - 1, true)) AS hole(lo, hi, counts)
    WHERE hole.counts AND hole.lo <= hole.hi
    UNION ALL
    SELECT %(lo)s::bigint, %(hi)s::bigint
    WHERE NOT EXISTS (SELECT FROM audit_log WHERE {_IN_CHUNK})
    """,
)
"""The ids of the range that are not visible: before the first present id (only the first
row's ``previous_id`` is the range's edge), after each present id, or the whole range."""

AUDIT_CHUNK_RECENT_BOOTS = Statement(
    "audit_chunk_recent_boots",
    f"""
    SELECT product_id::text, id, duration_ms
    FROM (SELECT product_id, id, duration_ms,
                 row_number() OVER (PARTITION BY product_id ORDER BY id DESC) AS newest_first
          FROM audit_log
          WHERE {_IN_CHUNK} AND action = ANY(%(boot_actions)s) AND duration_ms IS NOT NULL
            AND product_id = ANY(%(product_ids)s::uuid[])) AS boots
    WHERE newest_first <= %(sample_size)s
    """,
)

AUDIT_CHUNK_LAST_HOUR = Statement(
    "audit_chunk_last_hour",
    f"""
    SELECT product_id::text, action, timestamp
    FROM audit_log
    WHERE {_IN_CHUNK} AND timestamp > %(since)s AND action = ANY(%(actions)s)
      AND product_id IS NOT NULL
    """,
)

AUDIT_ROWS_AFTER = Statement(
    "audit_rows_after",
    """
    SELECT id, product_id::text, action, timestamp, duration_ms
    FROM audit_log
    WHERE id > %(after_id)s
    ORDER BY id
    LIMIT %(batch_size)s
    """,
)

AUDIT_ROWS_IN_GAPS = Statement(
    "audit_rows_in_gaps",
    """
    SELECT a.id, a.product_id::text, a.action, a.timestamp, a.duration_ms
    FROM unnest(%(gap_los)s::bigint[], %(gap_his)s::bigint[]) AS gap(lo, hi)
    JOIN audit_log AS a ON a.id BETWEEN gap.lo AND gap.hi
    """,
)

DATA_IDENTITY = Statement(
    "data_identity",
    """
    SELECT (SELECT system_identifier::text FROM pg_control_system()),
           (SELECT timeline_id FROM pg_control_checkpoint()),
           (SELECT oid::bigint FROM pg_database WHERE datname = current_database()),
           to_regclass('audit_log')::oid::bigint,
           (SELECT md5(row(a.id, a.timestamp, a.product_id, a.user_id, a.engine_id, a.action,
                           a.actor, a.duration_ms)::text)
            FROM audit_log AS a WHERE a.id = %(high_water)s)
    """,
)
"""What a checkpoint is checked against: the cluster, its timeline, the database, the table
and a digest of the high-water row (timestamps print in UTC, the session's zone)."""

_LISTING_CASTS = {"engine_id": "::text"}
"""Listing columns read through a cast (a uuid arrives as its text)."""
_ENGINE_COLUMNS = ", ".join(name + _LISTING_CASTS.get(name, "") for name in ENGINE_LISTING_FIELDS)

_OF_PRODUCT = "product_id = %(product_id)s"
_OF_PRODUCT_IN_STATUS = "product_id = %(product_id)s AND status = %(status)s"
"""The two ``/engines`` filters; each has its own statements (and index) below."""


def _engines_page(name: str, matching: str) -> Statement:
    """A deferred join: the offset is skipped inside the index (an index-only scan wherever
    the visibility map allows), and only the page's rows are read from the table. The order
    names the table's columns: a bare ``engine_id`` would mean the text output column and
    cost a sort."""
    return Statement(
        name,
        f"""
        SELECT {_ENGINE_COLUMNS} FROM engines
        JOIN (SELECT engine_id FROM engines
              WHERE {matching}
                AND (created_at, engine_id) > (%(after_created_at)s, %(after_engine_id)s::uuid)
              ORDER BY engines.created_at, engines.engine_id
              LIMIT %(limit)s OFFSET %(offset)s) AS page USING (engine_id)
        ORDER BY engines.created_at, engines.engine_id
        """,
    )


ENGINES_PAGE = _engines_page("engines_page", _OF_PRODUCT)
ENGINES_PAGE_BY_STATUS = _engines_page("engines_page_by_status", _OF_PRODUCT_IN_STATUS)
ENGINES_COUNT = Statement("engines_count", f"SELECT count(*) FROM engines WHERE {_OF_PRODUCT}")
ENGINES_COUNT_BY_STATUS = Statement(
    "engines_count_by_status", f"SELECT count(*) FROM engines WHERE {_OF_PRODUCT_IN_STATUS}"
)

SCHEMA_COLUMNS = Statement(
    "schema_columns",
    """
    SELECT table_name, column_name
    FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = ANY(%(tables)s)
    """,
)

SCHEMA_INDEXES = Statement(
    "schema_indexes",
    """
    SELECT c.relname
    FROM pg_index AS i
    JOIN pg_class AS c ON c.oid = i.indexrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relname = ANY(%(names)s) AND i.indisvalid
    """,
)

SERVER_VERSION = Statement("server_version", "SELECT current_setting('server_version_num')::int")

AUDIT_BATCH_SIZE = 50_000
MIN_SERVER_VERSION = 130000
"""pg_current_snapshot() and the xid8 functions the audit counting relies on arrived in 13."""

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "products": ("id", "slug", "display_name", "api_key_hash", "policy"),
    "engines": ("product_id", *ENGINE_LISTING_FIELDS),
    "audit_log": ("id", "timestamp", "product_id", "action", "duration_ms"),
}
"""The columns the exporter reads (SPEC §2), which ``check`` verifies."""


def recommended_index_names() -> list[str]:
    """Index names declared in ``exporter/sql/indexes.sql`` (the single source of them)."""
    return [index.name for index in recommended_indexes()]


async def fetch_snapshot(tx: Transaction) -> DbSnapshot:
    """Must be the transaction's first statement: it takes the snapshot."""
    started_at, observed_at, xmin, in_recovery, lag_s = await tx.fetch_one(SNAPSHOT)
    (next_xid,) = await tx.fetch_one(NEXT_XID)
    return DbSnapshot(
        started_at,
        observed_at,
        int(xmin),
        None if next_xid is None else int(next_xid),
        in_recovery=bool(in_recovery),
        replication_lag_s=float(lag_s),
    )


async def allow_statement_time(tx: Transaction, seconds: float) -> None:
    """Bound the rest of ``tx``'s statements by ``seconds`` (and the client's wait to match):
    the backfill bounds its statements by its own limit, not the session's."""
    await tx.fetch_one(TRANSACTION_STATEMENT_TIMEOUT, {"ms": str(timeout_ms(seconds))})
    tx.wait_for_statements(seconds)


async def fetch_products(tx: Transaction) -> list[Product]:
    quotas: dict[str | None, int | None] = {None: None}
    products = []
    async for batch in tx.fetch_batches(PRODUCTS):
        for product_id, slug, name, key_hash, max_engines in batch:
            if max_engines not in quotas:
                quotas[max_engines] = quota_from_policy(json.loads(max_engines))
            products.append(Product(product_id, slug, name, key_hash, quotas[max_engines]))
    return products


class EngineCount(NamedTuple):
    """One row of ``engine_counts``: a product's engines in one status. A tuple, not a
    dataclass: a refresh makes one per product and status (tens of thousands at scale)."""

    product_id: str
    status: str
    engines: int
    oldest_provisioning_at: datetime | None
    """When the oldest engine of a ``provisioning`` group was created; None for every other
    status, whose creation times nothing reads (and whose parsing would cost the refresh)."""


async def fetch_engine_counts(tx: Transaction) -> list[EngineCount]:
    return [
        count
        async for batch in tx.fetch_batches(ENGINE_COUNTS)
        for count in map(EngineCount._make, batch)
    ]


async def fetch_engine_census(tx: Transaction, probed_before: datetime) -> list[EngineGroup]:
    params = {"probed_before": probed_before}
    return [
        EngineGroup(pid, status, version, int(count), oldest, int(overdue), oldest_probe)
        async for batch in tx.fetch_batches(ENGINE_CENSUS, params)
        for pid, status, version, count, oldest, overdue, oldest_probe in batch
    ]


def engine_counts_of(groups: Sequence[EngineGroup], pace: Pace = no_pace) -> list[EngineCount]:
    """The ``engine_counts`` rows a census holds: its groups summed over versions."""
    counts: dict[tuple[str, str], EngineCount] = {}
    for group in groups:
        pace()
        key = (group.product_id, group.status)
        known = counts.get(key)
        oldest = group.oldest_created_at if group.status == "provisioning" else None
        if oldest is not None and known is not None and known.oldest_provisioning_at is not None:
            oldest = min(oldest, known.oldest_provisioning_at)
        counts[key] = EngineCount(
            group.product_id, group.status, group.count + (known.engines if known else 0), oldest
        )
    return list(counts.values())


async def fetch_audit_id_bounds(tx: Transaction) -> tuple[int | None, int | None]:
    low, high = await tx.fetch_one(AUDIT_ID_BOUNDS)
    return low, high


@dataclass(frozen=True, slots=True)
class AuditTotal:
    product_id: str | None
    """``None`` for the system rows: they count as visible ids, for no product."""
    action: str
    rows: int
    boot_bucket: int | None
    boot_sum_ms: int
    rows_in_window: int
    """Rows of the group inside the rolling window."""


@dataclass(frozen=True, slots=True)
class AuditChunk:
    """What one backfill chunk found in its id range."""

    totals: list[AuditTotal]
    missing: list[tuple[int, int]]
    recent_boots: list[tuple[str, int, int]]
    last_hour: list[tuple[str, str, datetime]]


async def fetch_audit_chunk_totals(
    tx: Transaction,
    lo: int,
    hi: int,
    *,
    boot_actions: Sequence[str],
    thresholds_ms: Sequence[int],
    since: datetime,
) -> list[AuditTotal]:
    """Per product and action in the ids ``lo..hi``: rows, boot bucket and duration sum, and
    the rows after ``since``."""
    params = {
        "lo": lo,
        "hi": hi,
        "boot_actions": list(boot_actions),
        "thresholds_ms": list(thresholds_ms),
        "since": since,
    }
    return [
        AuditTotal(product_id, action, int(rows), bucket, int(sum_ms), int(in_window))
        for product_id, action, rows, bucket, sum_ms, in_window in await tx.fetch_all(
            AUDIT_CHUNK_TOTALS, params
        )
    ]


async def fetch_audit_chunk_missing_ids(tx: Transaction, lo: int, hi: int) -> list[tuple[int, int]]:
    """The ranges of ids in ``lo..hi`` not visible in this snapshot, in id order."""
    rows = await tx.fetch_all(AUDIT_CHUNK_MISSING_IDS, {"lo": lo, "hi": hi})
    return sorted((int(a), int(b)) for a, b in rows)


async def fetch_audit_chunk_recent_boots(
    tx: Transaction,
    lo: int,
    hi: int,
    *,
    boot_actions: Sequence[str],
    sample_size: int,
    product_ids: Sequence[str],
) -> list[tuple[str, int, int]]:
    """The newest ``sample_size`` boots with a duration in ``lo..hi`` of each of
    ``product_ids``: (product, id, duration)."""
    params = {
        "lo": lo,
        "hi": hi,
        "boot_actions": list(boot_actions),
        "sample_size": sample_size,
        "product_ids": list(product_ids),
    }
    return [(p, int(i), int(d)) for p, i, d in await tx.fetch_all(AUDIT_CHUNK_RECENT_BOOTS, params)]


async def fetch_audit_chunk_last_hour(
    tx: Transaction, lo: int, hi: int, *, since: datetime, tracked_actions: Sequence[str]
) -> list[tuple[str, str, datetime]]:
    """The product rows of ``lo..hi`` after ``since`` with a tracked action."""
    params = {"lo": lo, "hi": hi, "since": since, "actions": list(tracked_actions)}
    return [(p, a, t) for p, a, t in await tx.fetch_all(AUDIT_CHUNK_LAST_HOUR, params)]


async def fetch_data_identity(tx: Transaction, high_water: int) -> DataIdentity:
    system_identifier, timeline, database_oid, table_oid, fingerprint = await tx.fetch_one(
        DATA_IDENTITY, {"high_water": high_water}
    )
    return DataIdentity(
        system_identifier=str(system_identifier),
        timeline=int(timeline),
        database_oid=int(database_oid),
        audit_log_oid=int(table_oid),
        high_water=high_water,
        high_water_fingerprint=fingerprint,
    )


def _audit_row(row: Sequence[object]) -> AuditRow:
    audit_id, product_id, action, timestamp, duration_ms = row
    assert isinstance(audit_id, int)
    assert isinstance(action, str)
    assert isinstance(timestamp, datetime)
    return AuditRow(
        audit_id,
        product_id if isinstance(product_id, str) else None,
        action,
        timestamp,
        duration_ms if isinstance(duration_ms, int) else None,
    )


async def fetch_audit_rows_after(tx: Transaction, after_id: int) -> list[AuditRow]:
    """All rows above ``after_id`` visible in this snapshot, read in bounded batches."""
    rows: list[AuditRow] = []
    while True:
        batch = await tx.fetch_all(
            AUDIT_ROWS_AFTER, {"after_id": after_id, "batch_size": AUDIT_BATCH_SIZE}
        )
        rows.extend(_audit_row(row) for row in batch)
        if len(batch) < AUDIT_BATCH_SIZE:
            return rows
        after_id = rows[-1].id


async def fetch_audit_rows_in_gaps(
    tx: Transaction, gap_los: Sequence[int], gap_his: Sequence[int]
) -> list[AuditRow]:
    if not gap_los:
        return []
    params = {"gap_los": list(gap_los), "gap_his": list(gap_his)}
    return [_audit_row(row) for row in await tx.fetch_all(AUDIT_ROWS_IN_GAPS, params)]


@dataclass(frozen=True, slots=True)
class EnginePage:
    engines: list[EngineRecord]
    total: int


@dataclass(frozen=True, slots=True)
class EnginePosition:
    """A place in the ``created_at, engine_id`` order: pages after it start past this engine."""

    created_at: datetime
    engine_id: str


_BEFORE_EVERY_ENGINE = EnginePosition(
    datetime.min.replace(tzinfo=UTC), "00000000-0000-0000-0000-000000000000"
)


async def fetch_engines_page(
    tx: Transaction,
    product_id: str,
    status: str | None,
    limit: int,
    offset: int,
    after: EnginePosition | None = None,
    *,
    total: int | None = None,
) -> EnginePage:
    """One page in ``created_at, engine_id`` order, by offset or after a position (keyset).

    ``total`` is counted in the same snapshot unless the caller already knows it.
    """
    start = after or _BEFORE_EVERY_ENGINE
    params: dict[str, object] = {
        "product_id": product_id,
        "status": status,
        "limit": limit,
        "offset": offset,
        "after_created_at": start.created_at,
        "after_engine_id": start.engine_id,
    }
    page, count = (
        (ENGINES_PAGE, ENGINES_COUNT)
        if status is None
        else (ENGINES_PAGE_BY_STATUS, ENGINES_COUNT_BY_STATUS)
    )
    rows = await tx.fetch_all(page, params)
    if total is None:
        (total,) = await tx.fetch_one(count, params)
    return EnginePage([EngineRecord(*row) for row in rows], int(total))


async def fetch_replication(tx: Transaction) -> tuple[bool, float]:
    """(in recovery, replication lag in seconds)."""
    in_recovery, lag_s = await tx.fetch_one(REPLICATION)
    return bool(in_recovery), float(lag_s)


async def fetch_server_version(tx: Transaction) -> int:
    (version,) = await tx.fetch_one(SERVER_VERSION)
    return int(version)


async def fetch_schema_columns(tx: Transaction, tables: Sequence[str]) -> set[tuple[str, str]]:
    rows = await tx.fetch_all(SCHEMA_COLUMNS, {"tables": list(tables)})
    return {(table, column) for table, column in rows}


async def fetch_present_indexes(tx: Transaction, names: Sequence[str]) -> set[str]:
    return {name for (name,) in await tx.fetch_all(SCHEMA_INDEXES, {"names": list(names)})}
