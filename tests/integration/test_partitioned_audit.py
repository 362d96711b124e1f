"""The exporter on an audit log partitioned by month on ``timestamp`` (docs/design/scaling.md).

The orchestrator's ``audit_log`` is replaced by a ``PARTITION BY RANGE (timestamp)`` table
with one partition per month: the primary key has to include the partition key, so it is
``(id, timestamp)``. The exporter's statements must still be exact on it, the one that
constrains ``timestamp`` (the rolling hour) must be pruned to the partitions that can hold
the last hour, and the refresher's lifetime counters must equal ``count(*)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg2
import pytest

from exporter import queries
from exporter.db import Database
from exporter.domain import ROLLING_WINDOW, EventCategory
from exporter.refresher import Refresher
from tests.support.counts import audit_counts_by_product, snapshot_counts
from tests.support.db import FleetDatabase, execute, fetch_all, fetch_value, insert_product
from tests.support.service import make_settings

MONTHS_OF_HISTORY = 4
ROWS_PER_MONTH = 3_000
ACTIONS = ["provision", "destroy", "health_failed", "auto_restart_start", "wake", "health_check"]

PARTITIONED_AUDIT_LOG = """
DROP TABLE audit_log;
CREATE TABLE audit_log (
    id          BIGSERIAL,
    timestamp   TIMESTAMPTZ NOT NULL DEFAULT now(),
    product_id  UUID,
    user_id     TEXT,
    engine_id   UUID,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL DEFAULT 'system',
    metadata    JSONB NOT NULL DEFAULT '{}',
    duration_ms INTEGER,
    PRIMARY KEY (id, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE INDEX idx_audit_log_timestamp ON audit_log (timestamp);
CREATE INDEX idx_audit_log_action ON audit_log (action);
"""


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime
    upper: datetime


@dataclass(frozen=True)
class PartitionedLog:
    dsn: str
    partitions: tuple[Partition, ...]
    product_ids: tuple[str, str]


def _month_start(moment: datetime, months_back: int = 0) -> datetime:
    index = moment.year * 12 + moment.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _monthly_partitions(now: datetime) -> tuple[Partition, ...]:
    """From MONTHS_OF_HISTORY months back to next month, as an operator would pre-create them."""
    starts = [_month_start(now, back) for back in range(MONTHS_OF_HISTORY, -3, -1)]
    return tuple(
        Partition(f"audit_log_y{lower:%Y}m{lower:%m}", lower, upper)
        for lower, upper in pairwise(starts)
    )


def _insert_history(dsn: str, product_ids: tuple[str, str], since: datetime, rows: int) -> None:
    """Rows spread evenly from ``since`` to a minute ago, in id order = time order."""
    execute(
        dsn,
        """
        INSERT INTO audit_log (timestamp, product_id, action, duration_ms)
        SELECT %(since)s + (now() - interval '1 minute' - %(since)s) * (i::float8 / %(rows)s),
               (%(products)s::uuid[])[1 + i %% 2],
               (%(actions)s::text[])[1 + (i * 7) %% cardinality(%(actions)s::text[])],
               CASE WHEN i %% 3 = 0 THEN 1000 + i %% 60000 END
        FROM generate_series(1, %(rows)s) AS i
        ORDER BY 1
        """,
        {"since": since, "rows": rows, "products": list(product_ids), "actions": ACTIONS},
    )


@pytest.fixture
def partitioned_log(fleet_db: FleetDatabase) -> PartitionedLog:
    dsn = fleet_db.dsn
    now = datetime.now(UTC)
    partitions = _monthly_partitions(now)
    execute(dsn, PARTITIONED_AUDIT_LOG)
    for partition in partitions:
        execute(
            dsn,
            f"CREATE TABLE {partition.name} PARTITION OF audit_log"
            " FOR VALUES FROM (%(lower)s) TO (%(upper)s)",
            {"lower": partition.lower, "upper": partition.upper},
        )
    product_ids = (
        insert_product(dsn, slug="acme", api_key="pk-sept-acme-" + "a" * 40),
        insert_product(dsn, slug="globex", api_key="pk-sept-globex-" + "g" * 40),
    )
    _insert_history(dsn, product_ids, partitions[0].lower, MONTHS_OF_HISTORY * ROWS_PER_MONTH)
    execute(dsn, "ANALYZE audit_log")
    return PartitionedLog(dsn, partitions, product_ids)


def _explain(dsn: str, statement: queries.Statement, params: dict[str, Any]) -> dict[str, Any]:
    """The plan the exporter's driver gets: psycopg2 sends the values inline, as it runs them."""
    (plan,) = fetch_value(dsn, "EXPLAIN (FORMAT JSON) " + statement.sql, params)
    assert isinstance(plan, dict)
    return plan


def _scanned_relations(node: dict[str, Any]) -> set[str]:
    names = {node["Relation Name"]} if "Relation Name" in node else set()
    for child in node.get("Plans", []):
        names |= _scanned_relations(child)
    return names


def test_every_month_lands_in_its_own_partition(partitioned_log: PartitionedLog) -> None:
    rows_by_partition = dict(
        fetch_all(
            partitioned_log.dsn,
            "SELECT tableoid::regclass::text, count(*) FROM audit_log GROUP BY 1",
        )
    )
    history = [p.name for p in partitioned_log.partitions if p.lower <= datetime.now(UTC)]
    assert set(rows_by_partition) == set(history)
    assert sum(rows_by_partition.values()) == MONTHS_OF_HISTORY * ROWS_PER_MONTH


def test_last_hour_statement_scans_only_partitions_that_can_hold_the_last_hour(
    partitioned_log: PartitionedLog,
) -> None:
    since = datetime.now(UTC) - ROLLING_WINDOW
    plan = _explain(
        partitioned_log.dsn,
        queries.AUDIT_CHUNK_LAST_HOUR,
        {"since": since, "actions": ACTIONS, "lo": 1, "hi": 2**62},
    )
    scanned = _scanned_relations(plan["Plan"])
    reachable = {p.name for p in partitioned_log.partitions if p.upper > since}
    assert scanned == reachable
    assert len(scanned) < len(partitioned_log.partitions) - 1


async def test_id_range_statements_read_exactly_the_requested_ids_across_partitions(
    partitioned_log: PartitionedLog,
) -> None:
    dsn = partitioned_log.dsn
    ids = [row[0] for row in fetch_all(dsn, "SELECT id FROM audit_log ORDER BY id")]
    gaps = [(ids[10], ids[12]), (ids[ROWS_PER_MONTH * 2], ids[ROWS_PER_MONTH * 2 + 4])]
    database = Database(make_settings(dsn).database)
    try:
        async with database.read_transaction() as tx:
            after = await queries.fetch_audit_rows_after(tx, ids[-50])
            in_gaps = await queries.fetch_audit_rows_in_gaps(
                tx, [lo for lo, _ in gaps], [hi for _, hi in gaps]
            )
    finally:
        await database.close()
    assert [row.id for row in after] == ids[-49:]
    assert sorted(row.id for row in in_gaps) == [i for lo, hi in gaps for i in ids if lo <= i <= hi]


async def test_refresher_counts_on_the_partitioned_log_equal_count_star(
    partitioned_log: PartitionedLog,
) -> None:
    dsn = partitioned_log.dsn
    acme, globex = partitioned_log.product_ids
    settings = make_settings(dsn)
    database = Database(settings.database)
    refresher = Refresher(database, settings, version="test")
    late = psycopg2.connect(dsn)
    try:
        assert await refresher.refresh_until_counted()
        assert snapshot_counts(refresher) == audit_counts_by_product(dsn)

        with late.cursor() as cursor:
            cursor.execute(
                "INSERT INTO audit_log (product_id, action) VALUES (%s, 'destroy')", (acme,)
            )
        rolled_back = psycopg2.connect(dsn)
        with rolled_back.cursor() as cursor:
            cursor.execute(
                "INSERT INTO audit_log (product_id, action) VALUES (%s, 'destroy')", (globex,)
            )
        rolled_back.rollback()
        rolled_back.close()
        _insert_history(
            dsn, partitioned_log.product_ids, datetime.now(UTC) - timedelta(minutes=30), 500
        )
        assert await refresher.refresh_once()
        tracker = refresher.audit.tracker
        assert tracker is not None
        assert tracker.pending_ids >= 2
        late.commit()
        assert await refresher.refresh_once()
    finally:
        late.close()
        await database.close()

    assert snapshot_counts(refresher) == audit_counts_by_product(dsn)
    snapshot = refresher.published.snapshot
    assert snapshot is not None
    last_hour_provisions = dict(
        fetch_all(
            dsn,
            "SELECT product_id::text, count(*) FROM audit_log WHERE action = 'provision'"
            " AND timestamp > %(now)s - interval '1 hour' AND timestamp <= %(now)s GROUP BY 1",
            {"now": snapshot.taken_at},
        )
    )
    for product_id in partitioned_log.product_ids:
        fleet = snapshot.fleets.get(product_id)
        assert fleet is not None
        assert fleet.last_hour[EventCategory.PROVISION] == last_hour_provisions.get(product_id, 0)
