"""Synchronous database helpers for tests: run SQL and insert orchestrator rows."""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
from psycopg2.extras import Json, execute_values

from exporter.db import APPLICATION_NAME
from tests.support import canary

Params = Mapping[str, object] | tuple[object, ...] | None
DEFAULT_POLICY = {"max_engines": 1000, "rate_limit_rpm": 600}


@dataclass(frozen=True)
class FleetDatabase:
    """A fresh database with the orchestrator's schema, made for one test."""

    name: str
    dsn: str


def execute(dsn: str, sql: str, params: Params = None) -> None:
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        connection.close()


def fetch_all(dsn: str, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
    finally:
        connection.close()


def fetch_value(dsn: str, sql: str, params: Params = None) -> Any:
    return fetch_all(dsn, sql, params)[0][0]


def exporter_sessions(dsn: str, where: str = "true") -> int:
    """How many of the exporter's connections (other than this one) match ``where``, a
    condition on ``pg_stat_activity``."""
    return int(
        fetch_value(
            dsn,
            f"SELECT count(*) FROM pg_stat_activity WHERE application_name = %(name)s"
            f" AND pid <> pg_backend_pid() AND ({where})",
            {"name": APPLICATION_NAME},
        )
    )


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def insert_product(
    dsn: str,
    *,
    slug: str,
    api_key: str,
    display_name: str | None = None,
    product_id: str | None = None,
    policy: object = DEFAULT_POLICY,
) -> str:
    canary.secret(api_key)
    product_id = product_id or str(uuid.uuid4())
    execute(
        dsn,
        "INSERT INTO products (id, slug, display_name, api_key_hash, policy)"
        " VALUES (%(id)s, %(slug)s, %(name)s, %(hash)s, %(policy)s)",
        {
            "id": product_id,
            "slug": slug,
            "name": display_name or slug.title(),
            "hash": key_hash(api_key),
            "policy": Json(policy),
        },
    )
    return product_id


def insert_engine(
    dsn: str,
    *,
    product_id: str,
    user_id: str,
    status: str,
    created_at: datetime | None = None,
    engine_version: str = "september-engine:2.3.0",
    url: str | None = None,
    last_health_at: datetime | None = None,
    engine_id: str | None = None,
) -> str:
    engine_id = engine_id or str(uuid.uuid4())
    execute(
        dsn,
        "INSERT INTO engines (engine_id, product_id, user_id, status, url, engine_version,"
        " engine_key_hash, engine_key_enc, created_at, last_health_at)"
        " VALUES (%(engine_id)s, %(product_id)s, %(user_id)s, %(status)s, %(url)s, %(version)s,"
        " 'secret-hash', 'secret-enc', coalesce(%(created_at)s, now()), %(last_health_at)s)",
        {
            "engine_id": engine_id,
            "product_id": product_id,
            "user_id": user_id,
            "status": status,
            "url": url,
            "version": engine_version,
            "created_at": created_at,
            "last_health_at": last_health_at,
        },
    )
    return engine_id


def insert_audit(
    dsn: str,
    *,
    product_id: str | None,
    action: str,
    timestamp: datetime | None = None,
    duration_ms: int | None = None,
    user_id: str | None = None,
    engine_id: str | None = None,
    actor: str = "system",
) -> int:
    audit_id: int = fetch_value(
        dsn,
        "INSERT INTO audit_log (timestamp, product_id, user_id, engine_id, action, actor,"
        " duration_ms) VALUES (coalesce(%(ts)s, now()), %(product_id)s, %(user_id)s,"
        " %(engine_id)s, %(action)s, %(actor)s, %(duration_ms)s) RETURNING id",
        {
            "ts": timestamp,
            "product_id": product_id,
            "user_id": user_id,
            "engine_id": engine_id,
            "action": action,
            "actor": actor,
            "duration_ms": duration_ms,
        },
    )
    return audit_id


def insert_audit_many(dsn: str, rows: Iterable[Mapping[str, object]]) -> None:
    values = [
        (
            row.get("timestamp"),
            row.get("product_id"),
            row.get("user_id"),
            row.get("engine_id"),
            row["action"],
            row.get("actor", "system"),
            row.get("duration_ms"),
        )
        for row in rows
    ]
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            execute_values(
                cursor,
                "INSERT INTO audit_log (timestamp, product_id, user_id, engine_id, action, actor,"
                " duration_ms) SELECT coalesce(v.ts::timestamptz, now()), v.p::uuid, v.u,"
                " v.e::uuid, v.a, v.actor, v.d::int"
                " FROM (VALUES %s) AS v(ts, p, u, e, a, actor, d)",
                values,
            )
    finally:
        connection.close()


def write_audit_rows(dsn: str, product_ids: list[str], seed: int, transactions: int) -> None:
    """Insert audit rows of ``product_ids`` in ``transactions`` transactions that overlap
    those of other writers: some commit late, some roll back (a thread each, beside a refresher)."""
    rng = random.Random(seed)
    connection = psycopg2.connect(dsn)
    try:
        for _ in range(transactions):
            with connection.cursor() as cursor:
                for _ in range(rng.randint(1, 4)):
                    cursor.execute(
                        "INSERT INTO audit_log (product_id, action, duration_ms)"
                        " VALUES (%s, %s, %s)",
                        (
                            rng.choice(product_ids),
                            rng.choice(["provision", "destroy", "health_failed", "wake"]),
                            rng.choice([None, rng.randint(100, 90_000)]),
                        ),
                    )
                    if rng.random() < 0.3:
                        time.sleep(rng.uniform(0, 0.02))
            if rng.random() < 0.2:
                connection.rollback()
            else:
                connection.commit()
    finally:
        connection.close()
