"""The demo's writer: every SQL statement of the demo, its pool, and the fleet simulator.

The simulator is the thin shell around ``model.FleetModel``: it loads its products' engines
from the database, asks the model for one step, and applies each resulting write in its own
transaction, as the orchestrator would (a state change and its audit row commit together).
Unlike the exporter, these connections write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import aiopg
import psycopg2

from exporter.db import Statement
from exporter.demo.model import (
    DEFAULT_RATES,
    AuditEntry,
    ChangeStatus,
    DeleteEngine,
    DemoProduct,
    EngineRow,
    FleetModel,
    InsertEngine,
    LoadedEngine,
    RecordHealth,
    RotateKey,
    SimulationRates,
    Write,
    restart_progress,
)
from exporter.logs import log_event

logger = logging.getLogger("exporter.demo")

APPLICATION_NAME = "engine-fleet-demo"
STATEMENT_TIMEOUT_S = 30.0
MAX_CATCH_UP_S = 60.0
"""A tick after a long stall (a database outage) advances the fleet by at most this much."""
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


async def open_pool(dsn: str) -> Any:
    """A small writing pool; connections open lazily, so creating it needs no database."""
    return await aiopg.create_pool(
        dsn,
        minsize=0,
        maxsize=2,
        timeout=STATEMENT_TIMEOUT_S + 5,
        enable_hstore=False,
        enable_json=False,
        enable_uuid=False,
        pool_recycle=300,
        application_name=APPLICATION_NAME,
        connect_timeout=5,
        options=f"-c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)} -c timezone=UTC",
    )


async def close_pool(pool: Any) -> None:
    pool.close()
    await pool.wait_closed()


@asynccontextmanager
async def write_transaction(pool: Any) -> AsyncIterator[Any]:
    """One transaction; on any failure the connection is closed instead of reused."""
    connection = await pool.acquire()
    committed = False
    try:
        cursor = await connection.cursor()
        try:
            await cursor.execute("BEGIN")
            yield cursor
            await cursor.execute("COMMIT")
            committed = True
        finally:
            cursor.close()
    finally:
        if not committed:
            connection.close()
        await pool.release(connection)


async def execute(cursor: Any, statement: Statement, params: Mapping[str, object]) -> int:
    """Run ``statement``; the number of rows it touched."""
    await cursor.execute(statement.sql, params)
    rowcount: int = cursor.rowcount
    return rowcount


async def fetch_all(
    cursor: Any, statement: Statement, params: Mapping[str, object]
) -> list[tuple[Any, ...]]:
    await cursor.execute(statement.sql, params)
    return list(await cursor.fetchall())


def audit_params(rows: Sequence[AuditEntry]) -> dict[str, list[object]]:
    return {
        "timestamp": [r.timestamp for r in rows],
        "product_id": [r.product_id for r in rows],
        "user_id": [r.user_id for r in rows],
        "engine_id": [r.engine_id for r in rows],
        "action": [r.action for r in rows],
        "actor": [r.actor for r in rows],
        "metadata": [json.dumps(r.metadata, separators=(",", ":")) for r in rows],
        "duration_ms": [r.duration_ms for r in rows],
    }


def engine_params(rows: Sequence[EngineRow]) -> dict[str, list[object]]:
    return {
        "engine_id": [r.engine_id for r in rows],
        "product_id": [r.product_id for r in rows],
        "user_id": [r.user_id for r in rows],
        "status": [r.status for r in rows],
        "url": [r.url for r in rows],
        "port": [r.port for r in rows],
        "engine_version": [r.engine_version for r in rows],
        "engine_key_hash": [r.engine_key_hash for r in rows],
        "engine_key_enc": [r.engine_key_enc for r in rows],
        "boot_duration_ms": [r.boot_duration_ms for r in rows],
        "created_at": [r.created_at for r in rows],
        "last_health_at": [r.last_health_at for r in rows],
    }


async def insert_audit(cursor: Any, rows: Sequence[AuditEntry]) -> None:
    if rows:
        await execute(cursor, INSERT_AUDIT_ROWS, audit_params(rows))


async def apply_write(pool: Any, write: Write) -> None:
    """One write, one transaction: the row change and its audit rows commit together."""
    async with write_transaction(pool) as cursor:
        if isinstance(write, InsertEngine):
            await execute(cursor, INSERT_ENGINES, engine_params([write.row]))
        elif isinstance(write, ChangeStatus):
            changed = await execute(
                cursor,
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
            await insert_audit(cursor, write.audit)
        elif isinstance(write, DeleteEngine):
            await execute(cursor, DELETE_ENGINE, {"engine_id": write.engine_id})
        elif isinstance(write, RecordHealth):
            params = {"engine_ids": list(write.engine_ids), "at": write.at}
            await execute(cursor, RECORD_HEALTH, params)
            await insert_audit(cursor, write.audit)
        elif isinstance(write, RotateKey):
            params = {
                "engine_id": write.engine_id,
                "engine_key_hash": write.engine_key_hash,
                "engine_key_enc": write.engine_key_enc,
            }
            if await execute(cursor, ROTATE_ENGINE_KEY, params) != 1:
                raise StaleFleet(f"engine {write.engine_id} is gone")
            await insert_audit(cursor, [write.audit])
        else:
            await insert_audit(cursor, write.audit)


def _describe(error: BaseException) -> str:
    """One line, with no connection string in it."""
    if isinstance(error, TimeoutError):
        return "timed out"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


_DATABASE_ERRORS = (psycopg2.Error, OSError, TimeoutError)


class FleetSimulator:
    """Keeps the demo products' fleet moving: one model step per tick, written to the database.

    It needs no memory of a previous run: the first tick (and the first after a database
    error) loads the products' engines and their unfinished crash episodes from the database.
    """

    def __init__(
        self,
        dsn: str,
        *,
        products: Sequence[DemoProduct],
        rates: SimulationRates = DEFAULT_RATES,
        seed: int | None = None,
        tick_s: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._products = tuple(products)
        self._model = FleetModel(self._products, rates=rates, rng=random.Random(seed))
        self._tick_s = tick_s
        self._pool: Any = None
        self._loaded = False

    def start_incident(self, name: str, *, failed_fraction: float = 0.4) -> None:
        """A demo product's slug: a burst of failures there on the next tick, enough to make
        it critical. ``health-loop``: the first product's engines are no longer probed."""
        self._model.start_incident(name, failed_fraction=failed_fraction)

    async def tick(self) -> None:
        """Advance the fleet by ``tick_s`` simulated seconds."""
        await self._step(self._tick_s)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await close_pool(pool)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_s`` until ``stop`` is set; database errors wait for the next tick."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        failing = False
        try:
            while not stop.is_set():
                now = loop.time()
                elapsed_s, last = min(now - last, MAX_CATCH_UP_S), now
                try:
                    await self._step(elapsed_s or self._tick_s)
                except _DATABASE_ERRORS as error:
                    if not failing:
                        log_event(
                            logger,
                            logging.WARNING,
                            "simulator_database_error",
                            error=_describe(error),
                        )
                    failing = True
                else:
                    if failing:
                        log_event(logger, logging.INFO, "simulator_database_recovered")
                    failing = False
                next_at = last + self._tick_s
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
        finally:
            await self.close()

    async def _step(self, dt_s: float) -> None:
        if self._pool is None:
            self._pool = await open_pool(self._dsn)
        if not self._loaded:
            await self._load()
        writes = self._model.step(dt_s, datetime.now(UTC))
        try:
            for write in writes:
                await apply_write(self._pool, write)
        except StaleFleet as stale:
            self._loaded = False
            log_event(logger, logging.INFO, "simulator_resync", reason=str(stale))
        except BaseException:
            self._loaded = False
            raise

    async def _load(self) -> None:
        now = datetime.now(UTC)
        product_ids = [p.product_id for p in self._products]
        async with write_transaction(self._pool) as cursor:
            engine_rows = await fetch_all(cursor, LOAD_ENGINES, {"product_ids": product_ids})
            quotas = await fetch_all(cursor, LOAD_QUOTAS, {"product_ids": product_ids})
            events = await fetch_all(
                cursor,
                LOAD_RESTART_EVENTS,
                {
                    "since": now - RESTART_HISTORY_WINDOW,
                    "actions": list(RESTART_ACTIONS),
                    "product_ids": product_ids,
                },
            )
        engines = [LoadedEngine(*row) for row in engine_rows]
        self._model.load(
            engines,
            restart_progress((e, a) for e, a in events),
            now,
            quotas={product_id: int(quota) for product_id, quota in quotas},
        )
        self._loaded = True
