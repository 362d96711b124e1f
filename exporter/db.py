"""Database access: the read-only pool and one guarded way to run a read transaction.

Every exporter connection is read-only and carries server-side limits (statement, lock and
idle transaction timeouts) plus a client-side backstop. A connection whose statement failed
or timed out is closed, never handed back to the pool mid-query. ``WritableDatabase`` is the
same pool for the demo, which writes a fleet; the exporter never builds one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiopg
import psycopg2
import psycopg2.errors

from exporter.config import DatabaseSettings

APPLICATION_NAME = "engine-fleet-exporter"
BACKSTOP_MARGIN_S = 2.0
"""How much longer than ``statement_timeout`` the client waits before it gives up itself."""
CLOSE_GRACE_S = 1.0
"""On shutdown, how long connections still in use may take to come back before they are cut."""


class StatementCancelled(Exception):
    """The server cancelled a statement (``statement_timeout``); the server itself is up."""


class DatabaseUnavailable(Exception):
    """The database could not be reached, or a statement failed or timed out."""

    def __init__(self, message: str, *, connection_lost: bool) -> None:
        super().__init__(message)
        self.connection_lost = connection_lost


@dataclass(frozen=True, slots=True)
class Statement:
    """A named, parameterised SQL statement (psycopg2 ``%(name)s`` parameters)."""

    name: str
    sql: str


def timeout_ms(seconds: float) -> int:
    """A timeout setting's value: whole milliseconds, at least one (0 would mean none)."""
    return max(1, round(seconds * 1000))


def session_options(settings: DatabaseSettings, *, read_only: bool = True) -> str:
    """Server settings every exporter connection starts with.

    A writing connection (``read_only=False``, the demo's) keeps only the statement timeout:
    it waits on its seeding lock and plans a seed inside its transaction, as long as it takes.
    """
    statement_ms = timeout_ms(settings.statement_timeout_s)
    if not read_only:
        return f"-c statement_timeout={statement_ms} -c timezone=UTC"
    return " ".join(
        (
            "-c default_transaction_read_only=on",
            f"-c statement_timeout={statement_ms}",
            f"-c lock_timeout={max(1, statement_ms // 2)}",
            f"-c idle_in_transaction_session_timeout={statement_ms * 2}",
            "-c timezone=UTC",
        )
    )


async def _execute(cursor: Any, sql: str, params: Mapping[str, object], timeout_s: float) -> None:
    """Run one statement; a server-side cancellation comes out as ``StatementCancelled``.

    aiopg turns the server's "canceling statement due to statement timeout" into
    ``asyncio.CancelledError``; only a cancellation of our own task may propagate as such.
    """
    try:
        await cursor.execute(sql, params, timeout=timeout_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise StatementCancelled("statement cancelled by the server (statement_timeout)") from None


def is_cancelled_statement(error: object) -> bool:
    """The server cancelled a statement (``statement_timeout``). aiopg also hands such an
    error to the event loop's exception handler, besides raising ``CancelledError`` in the
    caller, which ``_execute`` turns into ``StatementCancelled``."""
    return isinstance(error, psycopg2.extensions.QueryCanceledError)


FETCH_BATCH_ROWS = 200
"""Rows converted to Python values at a time; the event loop serves requests between batches,
so a large result (thousands of products) never holds it for long: a batch of 200 engine
counts takes about half a millisecond (1,000 rows held it for 2-4 ms, the loop's longest
waits during a refresh at 5,000 products)."""


class Transaction:
    """Statements run inside one read-only REPEATABLE READ transaction: one snapshot."""

    def __init__(self, cursor: Any, timeout_s: float) -> None:
        self._cursor = cursor
        self._timeout_s = timeout_s

    async def fetch_all(
        self, statement: Statement, params: Mapping[str, object] | None = None
    ) -> Sequence[tuple[Any, ...]]:
        return [row async for batch in self.fetch_batches(statement, params) for row in batch]

    async def fetch_batches(
        self, statement: Statement, params: Mapping[str, object] | None = None
    ) -> AsyncIterator[Sequence[tuple[Any, ...]]]:
        """The rows in batches of ``FETCH_BATCH_ROWS``, the event loop free between them: a
        caller that turns each batch into values before asking for the next one keeps a
        large result from holding the loop for long."""
        await _execute(self._cursor, statement.sql, params or {}, self._timeout_s)
        while batch := await self._cursor.fetchmany(FETCH_BATCH_ROWS):
            yield batch
            if len(batch) < FETCH_BATCH_ROWS:
                break
            await asyncio.sleep(0)

    def wait_for_statements(self, statement_timeout_s: float) -> None:
        """Match the client backstop to a statement timeout this transaction set for itself
        (``queries.allow_statement_time``)."""
        self._timeout_s = statement_timeout_s + BACKSTOP_MARGIN_S

    async def fetch_one(
        self, statement: Statement, params: Mapping[str, object] | None = None
    ) -> tuple[Any, ...]:
        rows = await self.fetch_all(statement, params)
        return rows[0]


class WriteTransaction(Transaction):
    """Statements run inside one READ COMMITTED transaction that may write."""

    async def execute(self, statement: Statement, params: Mapping[str, object]) -> int:
        """Run ``statement``; the number of rows it touched."""
        await _execute(self._cursor, statement.sql, params, self._timeout_s)
        rowcount: int = self._cursor.rowcount
        return rowcount


_T = TypeVar("_T", bound=Transaction)


class Database:
    """The exporter's pool; connections are opened lazily so start-up never needs the database."""

    read_only = True

    def __init__(
        self, settings: DatabaseSettings, *, application_name: str = APPLICATION_NAME
    ) -> None:
        self._settings = settings
        self._application_name = application_name
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._backstop_s = settings.statement_timeout_s + BACKSTOP_MARGIN_S

    async def _get_pool(self) -> Any:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await aiopg.create_pool(
                    self._settings.dsn,
                    minsize=0,
                    maxsize=self._settings.pool_max,
                    timeout=self._backstop_s,
                    enable_json=False,
                    enable_hstore=False,
                    enable_uuid=False,
                    pool_recycle=300,
                    application_name=self._application_name,
                    connect_timeout=max(1, round(self._settings.connect_timeout_s)),
                    options=session_options(self._settings, read_only=self.read_only),
                )
            return self._pool

    @asynccontextmanager
    async def read_transaction(self) -> AsyncIterator[Transaction]:
        """Acquire a connection and open one snapshot; any failure discards the connection.

        Database errors and timeouts come out as ``DatabaseUnavailable``; other exceptions
        raised by the caller's block pass through unchanged (the connection is still closed).
        """
        async with self._transaction(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", Transaction
        ) as tx:
            yield tx

    @asynccontextmanager
    async def _transaction(self, begin: str, kind: type[_T]) -> AsyncIterator[_T]:
        try:
            pool = await self._get_pool()
            connection = await asyncio.wait_for(
                pool.acquire(), timeout=self._settings.connect_timeout_s + BACKSTOP_MARGIN_S
            )
        except _DATABASE_ERRORS as error:
            raise DatabaseUnavailable(_describe(error), connection_lost=True) from error
        healthy = False
        try:
            cursor = await connection.cursor(timeout=self._backstop_s)
            try:
                await cursor.execute(begin, timeout=self._backstop_s)
                yield kind(cursor, self._backstop_s)
                await cursor.execute("COMMIT", timeout=self._backstop_s)
                healthy = True
            finally:
                cursor.close()
        except _DATABASE_ERRORS as error:
            raise DatabaseUnavailable(
                _describe(error), connection_lost=_is_connection_error(error)
            ) from error
        finally:
            if not healthy:
                connection.close()
            await pool.release(connection)

    async def close(self) -> None:
        """Close the pool; connections still in use after ``CLOSE_GRACE_S`` are cut."""
        async with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                try:
                    await asyncio.wait_for(self._pool.wait_closed(), timeout=CLOSE_GRACE_S)
                except TimeoutError:
                    self._pool.terminate()
                    await self._pool.wait_closed()
                self._pool = None


class WritableDatabase(Database):
    """A pool whose connections may write: the demo's, which plays the orchestrator."""

    read_only = False

    @asynccontextmanager
    async def write_transaction(self) -> AsyncIterator[WriteTransaction]:
        """One READ COMMITTED transaction that commits when the block ends; errors and the
        discarded connection as in ``read_transaction``."""
        async with self._transaction("BEGIN", WriteTransaction) as tx:
            yield tx


_DATABASE_ERRORS = (psycopg2.Error, OSError, TimeoutError, StatementCancelled)


def _is_connection_error(error: BaseException) -> bool:
    """False for a statement the server cancelled (timeouts, locks): the server is up."""
    cancelled = (
        psycopg2.errors.QueryCanceled | psycopg2.errors.LockNotAvailable | StatementCancelled
    )
    if isinstance(error, cancelled):
        return False
    return isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError | OSError)


def _describe(error: BaseException) -> str:
    """A one-line description with no connection string in it."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
