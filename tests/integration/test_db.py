"""The pool on a real PostgreSQL: a connection stuck in a statement cannot hold its shutdown
open, and the writable pool (the demo's) commits a block whole or not at all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from exporter import queries
from exporter.db import CLOSE_GRACE_S, Database, DatabaseUnavailable, Statement, WritableDatabase
from tests.support.db import execute, exporter_sessions, fetch_value
from tests.support.service import make_settings, wait_until

SLEEP = Statement("sleep", "SELECT pg_sleep(30)")
CREATE_NOTES = Statement(
    "create_notes", "CREATE TABLE demo_notes (text text NOT NULL CHECK (text <> ''))"
)
ADD_NOTE = Statement("add_note", "INSERT INTO demo_notes (text) VALUES (%(text)s)")
SESSION_NAME = Statement("session_name", "SELECT current_setting('application_name')")
STATEMENT_TIMEOUT = Statement("statement_timeout", "SELECT current_setting('statement_timeout')")


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


async def test_a_transaction_bounds_its_statements_by_the_time_it_allows_itself(
    fleet_db: Any,
) -> None:
    """The backfill's chunks run under ``refresh.backfill_statement_s``, not the session's
    statement timeout; the next transaction on the connection has the session's again."""
    database = Database(make_settings(fleet_db.dsn, database={"statement_timeout_s": 20}).database)

    async def sleep_under_the_shorter_limit() -> None:
        async with database.read_transaction() as tx:
            await queries.allow_statement_time(tx, 0.25)
            await tx.fetch_all(SLEEP)

    try:
        async with database.read_transaction() as tx:
            await queries.allow_statement_time(tx, 0.25)
            assert await tx.fetch_one(STATEMENT_TIMEOUT) == ("250ms",)
        async with database.read_transaction() as tx:
            assert await tx.fetch_one(STATEMENT_TIMEOUT) == ("20s",)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as raised:
            await sleep_under_the_shorter_limit()
        assert time.monotonic() - started < 10
        assert not raised.value.connection_lost
    finally:
        await database.close()


async def test_a_writable_database_commits_its_block_and_names_its_sessions(fleet_db: Any) -> None:
    settings = make_settings(fleet_db.dsn).database
    database = WritableDatabase(settings, application_name="fleet-writer")
    try:
        async with database.write_transaction() as tx:
            assert await tx.execute(CREATE_NOTES, {}) == -1
            assert await tx.execute(ADD_NOTE, {"text": "kept"}) == 1
            (name,) = await tx.fetch_one(SESSION_NAME)
        assert name == "fleet-writer"
        assert fetch_value(fleet_db.dsn, "SELECT text FROM demo_notes") == "kept"
    finally:
        await database.close()


async def test_a_failed_write_rolls_back_and_comes_out_as_database_unavailable(
    fleet_db: Any,
) -> None:
    execute(fleet_db.dsn, CREATE_NOTES.sql)
    database = WritableDatabase(make_settings(fleet_db.dsn).database)

    async def add_then_break_the_check() -> None:
        async with database.write_transaction() as tx:
            await tx.execute(ADD_NOTE, {"text": "lost"})
            await tx.execute(ADD_NOTE, {"text": ""})

    try:
        with pytest.raises(DatabaseUnavailable, match="demo_notes_text_check") as raised:
            await add_then_break_the_check()
        assert not raised.value.connection_lost
        assert fetch_value(fleet_db.dsn, "SELECT count(*) FROM demo_notes") == 0
        async with database.write_transaction() as tx:
            assert await tx.execute(ADD_NOTE, {"text": "after"}) == 1
        assert fetch_value(fleet_db.dsn, "SELECT count(*) FROM demo_notes") == 1
    finally:
        await database.close()
