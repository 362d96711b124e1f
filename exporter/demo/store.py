"""The demo's data access: every SQL statement of the demo and the writes it makes.

The demo plays the orchestrator, so unlike the exporter its connections write. They come
from the service's own pool (``exporter.db.WritableDatabase``): the same timeouts, the same
discarding of a failed connection and the same ``DatabaseUnavailable`` for any database
error. The seeder and the simulator call the functions here, never SQL of their own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from exporter.config import DatabaseSettings
from exporter.db import Statement, WritableDatabase, WriteTransaction
from exporter.demo.model import (
    AuditEntry,
    ChangeStatus,
    DeleteEngine,
    DemoProduct,
    EngineRow,
    InsertEngine,
    LoadedEngine,
    RecordHealth,
    RestartProgress,
    RotateKey,
    Write,
    restart_progress,
)

APPLICATION_NAME = "engine-fleet-demo"
STATEMENT_TIMEOUT_S = 30.0
POOL_MAX = 2
CONNECT_TIMEOUT_S = 5.0
BATCH_ROWS = 5_000
"""Rows per bulk insert while seeding."""
RESTART_HISTORY_WINDOW = timedelta(hours=2)
"""How far back a crash episode is looked up when loading; an episode lasts under 20 min."""
RESTART_ACTIONS = (
    "health_failed",
    "auto_restart_failed",
    "auto_restart_gave_up",
    "auto_restart_success",
)

LOCK_DEMO_SEED = Statement("lock_demo_seed", "SELECT pg_advisory_xact_lock(%(key)s)")
FIND_DEMO_PRODUCTS = Statement(
    "find_demo_products", "SELECT id::text FROM products WHERE id = ANY(%(product_ids)s::uuid[])"
)
INSERT_PRODUCTS = Statement(
    "insert_products",
    "INSERT INTO products (id, slug, display_name, api_key_hash, policy, created_at)"
    " SELECT * FROM unnest(%(id)s::uuid[], %(slug)s::text[], %(display_name)s::text[],"
    " %(api_key_hash)s::text[], %(policy)s::jsonb[], %(created_at)s::timestamptz[])",
)
INSERT_ENGINES = Statement(
    "insert_engines",
    "INSERT INTO engines (engine_id, product_id, user_id, status, url, port, engine_version,"
    " engine_key_hash, engine_key_enc, boot_duration_ms, created_at, last_health_at)"
    " SELECT * FROM unnest(%(engine_id)s::uuid[], %(product_id)s::uuid[], %(user_id)s::text[],"
    " %(status)s::text[], %(url)s::text[], %(port)s::integer[], %(engine_version)s::text[],"
    " %(engine_key_hash)s::text[], %(engine_key_enc)s::text[], %(boot_duration_ms)s::integer[],"
    " %(created_at)s::timestamptz[], %(last_health_at)s::timestamptz[])",
)
INSERT_AUDIT_ROWS = Statement(
    "insert_audit_rows",
    "INSERT INTO audit_log (timestamp, product_id, user_id, engine_id, action, actor, metadata,"
    " duration_ms)"
    " SELECT * FROM unnest(%(timestamp)s::timestamptz[], %(product_id)s::uuid[],"
    " %(user_id)s::text[], %(engine_id)s::uuid[], %(action)s::text[], %(actor)s::text[],"
    " %(metadata)s::jsonb[], %(duration_ms)s::integer[])",
)
UPDATE_ENGINE_STATUS = Statement(
    "update_engine_status",
    "UPDATE engines SET status = %(to_status)s,"
    " boot_duration_ms = coalesce(%(boot_duration_ms)s::integer, boot_duration_ms),"
    " last_health_at = coalesce(%(last_health_at)s::timestamptz, last_health_at)"
    " WHERE engine_id = %(engine_id)s::uuid AND status = %(from_status)s",
)
RECORD_HEALTH = Statement(
    "record_health",
    "UPDATE engines SET last_health_at = %(at)s"
    " WHERE engine_id = ANY(%(engine_ids)s::uuid[]) AND status = 'running'",
)
ROTATE_ENGINE_KEY = Statement(
    "rotate_engine_key",
    "UPDATE engines SET engine_key_hash = %(engine_key_hash)s, engine_key_enc = %(engine_key_enc)s"
    " WHERE engine_id = %(engine_id)s::uuid",
)
DELETE_ENGINE = Statement(
    "delete_engine",
    "DELETE FROM engines WHERE engine_id = %(engine_id)s::uuid AND status = 'destroying'",
)
LOAD_ENGINES = Statement(
    "load_engines",
    "SELECT engine_id::text, product_id::text, user_id, status, created_at FROM engines"
    " WHERE product_id = ANY(%(product_ids)s::uuid[]) ORDER BY created_at, engine_id",
)
LOAD_QUOTAS = Statement(
    "load_quotas",
    """
    SELECT id::text, floor((policy ->> 'max_engines')::numeric)::bigint
    FROM products
    WHERE id = ANY(%(product_ids)s::uuid[]) AND jsonb_typeof(policy -> 'max_engines') = 'number'
    """,
)
LOAD_RESTART_EVENTS = Statement(
    "load_restart_events",
    "SELECT engine_id::text, action FROM audit_log"
    " WHERE timestamp >= %(since)s AND action = ANY(%(actions)s::text[])"
    " AND product_id = ANY(%(product_ids)s::uuid[]) AND engine_id IS NOT NULL"
    " ORDER BY timestamp, id",
)


class StaleFleet(Exception):
    """An engine row was not in the state the model expected (someone else changed it)."""


@dataclass(frozen=True, slots=True)
class LoadedFleet:
    """What the simulator needs to resume a fleet: its engines, their unfinished crash
    episodes and each product's quota."""

    engines: tuple[LoadedEngine, ...]
    restart_progress: dict[str, RestartProgress]
    quotas: dict[str, int]


def open_database(dsn: str) -> WritableDatabase:
    """A small writing pool; connections open lazily, so creating it needs no database."""
    settings = DatabaseSettings(
        dsn=dsn,
        pool_max=POOL_MAX,
        statement_timeout_s=STATEMENT_TIMEOUT_S,
        connect_timeout_s=CONNECT_TIMEOUT_S,
    )
    return WritableDatabase(settings, application_name=APPLICATION_NAME)


def _columns(rows: Sequence[AuditEntry | EngineRow], row_type: type) -> dict[str, list[object]]:
    """One array parameter per field of ``row_type``, for an ``unnest`` bulk insert."""
    return {f.name: [getattr(row, f.name) for row in rows] for f in fields(row_type)}


def _audit_params(rows: Sequence[AuditEntry]) -> dict[str, list[object]]:
    metadata: list[object] = [json.dumps(r.metadata, separators=(",", ":")) for r in rows]
    return {**_columns(rows, AuditEntry), "metadata": metadata}


def _engine_params(rows: Sequence[EngineRow]) -> dict[str, list[object]]:
    return _columns(rows, EngineRow)


async def insert_engines(tx: WriteTransaction, rows: Sequence[EngineRow]) -> None:
    """Insert ``rows`` in bulk, ``BATCH_ROWS`` at a time."""
    for first in range(0, len(rows), BATCH_ROWS):
        await tx.execute(INSERT_ENGINES, _engine_params(rows[first : first + BATCH_ROWS]))


async def insert_audit(tx: WriteTransaction, rows: Sequence[AuditEntry]) -> None:
    """Insert ``rows`` in bulk, ``BATCH_ROWS`` at a time; nothing for no rows."""
    for first in range(0, len(rows), BATCH_ROWS):
        await tx.execute(INSERT_AUDIT_ROWS, _audit_params(rows[first : first + BATCH_ROWS]))


async def insert_products(
    tx: WriteTransaction,
    products: Sequence[DemoProduct],
    *,
    api_key_hashes: Sequence[str],
    policies: Sequence[dict[str, int]],
    created_at: datetime,
) -> None:
    await tx.execute(
        INSERT_PRODUCTS,
        {
            "id": [p.product_id for p in products],
            "slug": [p.slug for p in products],
            "display_name": [p.display_name for p in products],
            "api_key_hash": list(api_key_hashes),
            "policy": [json.dumps(policy) for policy in policies],
            "created_at": [created_at for _ in products],
        },
    )


async def lock_seeding(tx: WriteTransaction, key: int) -> None:
    """Wait for the advisory lock ``key``, held until the transaction ends."""
    await tx.execute(LOCK_DEMO_SEED, {"key": key})


async def any_product_exists(tx: WriteTransaction, products: Sequence[DemoProduct]) -> bool:
    rows = await tx.fetch_all(FIND_DEMO_PRODUCTS, {"product_ids": [p.product_id for p in products]})
    return bool(rows)


async def apply_write(database: WritableDatabase, write: Write) -> None:
    """One write, one transaction: the row change and its audit rows commit together."""
    async with database.write_transaction() as tx:
        if isinstance(write, InsertEngine):
            await insert_engines(tx, [write.row])
        elif isinstance(write, ChangeStatus):
            changed = await tx.execute(
                UPDATE_ENGINE_STATUS,
                {
                    "engine_id": write.engine_id,
                    "from_status": write.from_status,
                    "to_status": write.to_status,
                    "boot_duration_ms": write.boot_duration_ms,
                    "last_health_at": write.last_health_at,
                },
            )
            if changed != 1:
                raise StaleFleet(f"engine {write.engine_id} is no longer {write.from_status}")
            await insert_audit(tx, write.audit)
        elif isinstance(write, DeleteEngine):
            await tx.execute(DELETE_ENGINE, {"engine_id": write.engine_id})
        elif isinstance(write, RecordHealth):
            params = {"engine_ids": list(write.engine_ids), "at": write.at}
            await tx.execute(RECORD_HEALTH, params)
            await insert_audit(tx, write.audit)
        elif isinstance(write, RotateKey):
            params = {
                "engine_id": write.engine_id,
                "engine_key_hash": write.engine_key_hash,
                "engine_key_enc": write.engine_key_enc,
            }
            if await tx.execute(ROTATE_ENGINE_KEY, params) != 1:
                raise StaleFleet(f"engine {write.engine_id} is gone")
            await insert_audit(tx, [write.audit])
        else:
            await insert_audit(tx, write.audit)


async def load_fleet(
    database: WritableDatabase, products: Sequence[DemoProduct], now: datetime
) -> LoadedFleet:
    """The products' engines, crash episodes begun within ``RESTART_HISTORY_WINDOW`` of
    ``now``, and quotas, read in one transaction."""
    product_ids = [p.product_id for p in products]
    async with database.write_transaction() as tx:
        engine_rows = await tx.fetch_all(LOAD_ENGINES, {"product_ids": product_ids})
        quotas = await tx.fetch_all(LOAD_QUOTAS, {"product_ids": product_ids})
        events = await tx.fetch_all(
            LOAD_RESTART_EVENTS,
            {
                "since": now - RESTART_HISTORY_WINDOW,
                "actions": list(RESTART_ACTIONS),
                "product_ids": product_ids,
            },
        )
    return LoadedFleet(
        engines=tuple(LoadedEngine(*row) for row in engine_rows),
        restart_progress=restart_progress((e, a) for e, a in events),
        quotas={product_id: int(quota) for product_id, quota in quotas},
    )
