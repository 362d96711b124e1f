"""Database time spent by a client, read from ``pg_stat_statements``.

``reset`` clears the counters; ``spent`` sums ``total_exec_time`` over every statement run in
the database since, leaving out the benchmark's own reads of ``pg_stat_statements``. Run
one measured client at a time and the sum is that client's database cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2


@dataclass(frozen=True)
class DbTime:
    total_ms: float
    calls: int


def _query(dsn: str, sql: str, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def available(dsn: str) -> bool:
    rows = _query(dsn, "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
    return bool(rows)


def reset(dsn: str) -> None:
    _query(dsn, "SELECT pg_stat_statements_reset()")


def spent(dsn: str, *, matching: str = "%") -> DbTime:
    """Time and calls of the statements whose text matches the LIKE pattern ``matching``."""
    ((total, calls),) = _query(
        dsn,
        """
        SELECT coalesce(sum(s.total_exec_time), 0)::float8, coalesce(sum(s.calls), 0)::bigint
        FROM pg_stat_statements AS s
        JOIN pg_database AS d ON d.oid = s.dbid
        WHERE d.datname = current_database()
          AND s.query NOT ILIKE '%%pg_stat_statements%%'
          AND s.query LIKE %(matching)s
        """,
        {"matching": matching},
    )
    assert isinstance(total, float)
    assert isinstance(calls, int)
    return DbTime(total, calls)


def breakdown(dsn: str, limit: int = 3) -> list[tuple[str, float]]:
    """The statements that took the most time since the reset: (normalised text, ms)."""
    rows = _query(
        dsn,
        """
        SELECT s.query, s.total_exec_time::float8
        FROM pg_stat_statements AS s
        JOIN pg_database AS d ON d.oid = s.dbid
        WHERE d.datname = current_database() AND s.query NOT ILIKE '%%pg_stat_statements%%'
        ORDER BY s.total_exec_time DESC
        LIMIT %(limit)s
        """,
        {"limit": limit},
    )
    return [(str(query), float(str(ms))) for query, ms in rows]
