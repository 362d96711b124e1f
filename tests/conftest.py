"""Shared fixtures: a real PostgreSQL for the whole session, a fresh database per test."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import psycopg2
import pytest
from psycopg2 import sql

from exporter.logs import OneLineFormatter
from exporter.pgcluster import EmbeddedPostgres, PostgresNotFound, apply_schema
from tests.support import canary
from tests.support.db import FleetDatabase
from tests.support.replica import ReplicatedPostgres


def _unavailable(reason: str) -> None:
    """Under CI a missing tool is a failure; locally it skips with what to install."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class PgServer:
    base_dsn: str

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"{self.base_dsn} dbname={dbname}"


@dataclass(frozen=True)
class PrivatePostgres:
    server: EmbeddedPostgres
    dsn: str


E2E_DIR = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under ``tests/e2e`` runs live processes: ``-m "not e2e"`` leaves it out."""
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run stopped with SIGTERM (a CI timeout, ``timeout``) exits through the interpreter's
    exit path, so the throwaway PostgreSQL servers are stopped and removed, not left behind."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class _CanaryLogHandler(logging.Handler):
    """Every record any logger of the test process emits, as the service would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(OneLineFormatter("text"))

    def emit(self, record: logging.LogRecord) -> None:
        canary.observe(f"log of {record.name}", self.format(record))


@pytest.fixture(scope="session", autouse=True)
def secret_canary() -> Iterator[None]:
    """The session-wide check that no secret the suite used reached a log or a response body
    (see tests/support/canary.py)."""
    handler = _CanaryLogHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    yield
    root.removeHandler(handler)
    secrets, outputs = canary.SESSION.counts()
    leaks = canary.SESSION.leaks()
    assert not leaks, (
        f"{len(leaks)} of {outputs} outputs leak one of {secrets} secrets:\n" + "\n".join(leaks)
    )


async def _observe_chunk(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
) -> None:
    canary.observe(f"{params.method} {params.url}", params.chunk)


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """pytest-aiohttp's client factory, with every response body it reads kept for the
    secret canary."""

    async def factory(app: Any, **kwargs: Any) -> Any:
        tracing = aiohttp.TraceConfig()
        tracing.on_response_chunk_received.append(_observe_chunk)
        kwargs["trace_configs"] = [*kwargs.get("trace_configs", []), tracing]
        return await aiohttp_client(app, **kwargs)

    return factory


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    existing = os.environ.get("FLEET_TEST_DSN")
    if existing:
        parts = [p for p in existing.split() if not p.startswith("dbname=")]
        yield PgServer(" ".join(parts))
        return
    try:
        server = EmbeddedPostgres()
    except PostgresNotFound as error:
        _unavailable(str(error))
    with server:
        yield PgServer(f"host={server.host} port={server.port} user={server.user}")


def _admin(dsn: str, statement: sql.Composable) -> None:
    connection = psycopg2.connect(dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@contextlib.contextmanager
def fleet_database(pg_server: PgServer) -> Iterator[FleetDatabase]:
    """A new database with the orchestrator schema on ``pg_server``, dropped afterwards."""
    name = f"fleet_{uuid.uuid4().hex[:12]}"
    admin = pg_server.admin_dsn()
    _admin(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_server.admin_dsn(name)
    apply_schema(dsn)
    yield FleetDatabase(name, dsn)
    _admin(
        admin,
        sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {}").format(
            sql.Literal(name)
        ),
    )
    _admin(admin, sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def fleet_db(pg_server: PgServer) -> Iterator[FleetDatabase]:
    with fleet_database(pg_server) as database:
        yield database


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        server = EmbeddedPostgres(durable=True)
    except PostgresNotFound as error:
        _unavailable(str(error))
    with server:
        dsn = server.create_database("orchestrator")
        apply_schema(dsn)
        yield PrivatePostgres(server, dsn)


@pytest.fixture
def replicated_pg() -> Iterator[ReplicatedPostgres]:
    """A durable primary with the orchestrator schema and a streaming hot standby of it,
    made with ``pg_basebackup -R`` (as the ``postgres`` user when root), caught up."""
    try:
        primary = EmbeddedPostgres(durable=True)
    except PostgresNotFound as error:
        _unavailable(str(error))
    with primary:
        dsn = primary.create_database("orchestrator")
        apply_schema(dsn)
        with EmbeddedPostgres(durable=True, standby_of=primary) as standby:
            pair = ReplicatedPostgres(primary, standby, dsn, standby.dsn("orchestrator"))
            pair.wait_replayed()
            yield pair
