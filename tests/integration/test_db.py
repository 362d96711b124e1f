"""The pool's shutdown on a real PostgreSQL: a connection stuck in a statement cannot hold it
open."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exporter.db import CLOSE_GRACE_S, Database, DatabaseUnavailable, Statement
from tests.support.db import exporter_sessions
from tests.support.service import make_settings, wait_until

SLEEP = Statement("sleep", "SELECT pg_sleep(30)")


async def test_close_cuts_a_connection_still_busy_after_the_grace(fleet_db: Any) -> None:
    database = Database(make_settings(fleet_db.dsn, database={"statement_timeout_s": 20}).database)
    started = asyncio.Event()

    async def stuck_reader() -> None:
        async with database.read_transaction() as tx:
            started.set()
            await tx.fetch_all(SLEEP)

    reader = asyncio.create_task(stuck_reader())
    await asyncio.wait_for(started.wait(), timeout=10)

    async def sleeping() -> bool:
        return exporter_sessions(fleet_db.dsn) == 1

    await wait_until(sleeping, what="the statement to run")
    await asyncio.wait_for(database.close(), timeout=CLOSE_GRACE_S + 5)
    with pytest.raises(DatabaseUnavailable):
        await asyncio.wait_for(reader, timeout=5)
