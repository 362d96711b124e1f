"""The refresher under faults, on real PostgreSQL servers: exact counts, honest answers.

Each test that stops or locks the database uses its own server (``private_pg``).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient

from exporter.api import DATABASE, REFRESHER
from exporter.app import create_app
from exporter.db import DatabaseUnavailable, Statement
from tests.support.counts import audit_counts_by_slug, lifecycle_counts, scrape
from tests.support.db import (
    execute,
    exporter_sessions,
    fetch_value,
    insert_product,
    write_audit_rows,
)
from tests.support.service import make_settings, wait_until

KEY = "pk-sept-acme-" + "a" * 40
ClientFactory = Any


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_counters_stay_exact_under_out_of_order_commits_and_rollbacks(
    aiohttp_client: ClientFactory, fleet_db: Any, seed: int
) -> None:
    dsn = fleet_db.dsn
    products = [insert_product(dsn, slug=f"p{i}", api_key=f"{KEY}-{i}") for i in range(3)]
    app = create_app(make_settings(dsn))
    client: TestClient = await aiohttp_client(app)
    refresher = app[REFRESHER]
    threads = [
        threading.Thread(target=write_audit_rows, args=(dsn, products, seed * 100 + n, 40))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    refreshes = 0
    while any(thread.is_alive() for thread in threads):
        assert await refresher.refresh_until_counted()
        refreshes += 1
    for thread in threads:
        thread.join()
    assert await refresher.refresh_once()
    assert refreshes > 2, "the writers finished before the refresher could interleave"
    assert lifecycle_counts(await scrape(client)) == audit_counts_by_slug(dsn)


async def test_a_gap_held_by_the_newest_runningwrite_audit_rows_outlives_its_fence(
    aiohttp_client: ClientFactory, fleet_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer holding the newest transaction id is still running at or above the
    snapshot's ``xmax`` (one past the latest completed id); its audit id must stay a gap."""
    monkeypatch.setattr("exporter.audit.ID_ALLOCATION_GRACE", timedelta(0))
    dsn = fleet_db.dsn
    product = insert_product(dsn, slug="acme", api_key=KEY)
    app = create_app(make_settings(dsn))
    client: TestClient = await aiohttp_client(app)
    refresher = app[REFRESHER]
    insert = "INSERT INTO audit_log (product_id, action) VALUES (%s, 'provision')"
    early, late = psycopg2.connect(dsn), psycopg2.connect(dsn)
    try:
        with early.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()")
        with late.cursor() as cursor:
            cursor.execute(insert, (product,))
        with early.cursor() as cursor:
            cursor.execute(insert, (product,))
        early.commit()
        for _ in range(3):  # finds the gap, fences it, then looks again with the writer running
            assert await refresher.refresh_once()
        assert refresher.audit.tracker is not None
        assert refresher.audit.tracker.pending_ids == 1
        late.commit()
    finally:
        early.close()
        late.close()
    assert await refresher.refresh_once()
    assert lifecycle_counts(await scrape(client)) == {("acme", "provision"): 2}


async def test_database_down_at_start_then_up_becomes_ready_without_restart(
    aiohttp_client: ClientFactory, private_pg: Any
) -> None:
    insert_product(private_pg.dsn, slug="acme", api_key=KEY)
    private_pg.server.stop()
    app = create_app(
        make_settings(private_pg.dsn, refresh={"interval_s": 0.2, "max_staleness_s": 5})
    )
    client: TestClient = await aiohttp_client(app)
    await wait_until(
        lambda: _errors_at_least(client, "connect", 1), what="a failed connect to be counted"
    )
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503
    samples = await scrape(client)
    assert samples[("engine_fleet_database_up", ())] == 0
    assert not any(name == "engine_fleet_engines" for name, _ in samples)
    response = await client.get("/status", headers={"X-Platform-Key": KEY})
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "FLEET_DATA_UNAVAILABLE"
    private_pg.server.start()
    await wait_until(lambda: _status_is(client, "/readyz", 200), what="readiness after start")
    samples = await scrape(client)
    assert samples[("engine_fleet_database_up", ())] == 1
    assert samples[("engine_fleet_engines", (("product", "acme"), ("status", "running")))] == 0


async def _status_is(client: TestClient, path: str, status: int) -> bool:
    return (await client.get(path, headers={"X-Platform-Key": KEY})).status == status


async def _errors_at_least(client: TestClient, stage: str, count: int) -> bool:
    samples = await scrape(client)
    return samples[("engine_fleet_exporter_refresh_errors_total", (("stage", stage),))] >= count


async def test_database_stopped_mid_run_serves_last_data_until_stale_then_recovers_exactly(
    aiohttp_client: ClientFactory, private_pg: Any
) -> None:
    dsn = private_pg.dsn
    product = insert_product(dsn, slug="acme", api_key=KEY)
    execute(
        dsn,
        "INSERT INTO audit_log (product_id, action, duration_ms)"
        " SELECT %(p)s, 'provision', 1000 FROM generate_series(1, 50)",
        {"p": product},
    )
    app = create_app(make_settings(dsn, refresh={"interval_s": 0.2, "max_staleness_s": 2}))
    client: TestClient = await aiohttp_client(app)
    await wait_until(lambda: _status_is(client, "/readyz", 200), what="first refresh")
    private_pg.server.stop(mode="immediate")
    await wait_until(lambda: _errors_at_least(client, "connect", 1), what="a failed refresh")
    samples = await scrape(client)
    assert samples[("engine_fleet_database_up", ())] == 0
    assert (await client.get("/status", headers={"X-Platform-Key": KEY})).status in (200, 503)
    await wait_until(lambda: _status_is(client, "/status", 503), timeout_s=10, what="staleness")
    body = await (await client.get("/metrics", headers={"X-Platform-Key": KEY})).json()
    assert body["error"]["code"] == "FLEET_DATA_STALE"
    assert (await client.get("/readyz")).status == 503
    stale = await scrape(client)
    assert not any(name.startswith("engine_fleet_lifecycle") for name, _ in stale)
    assert ("engine_fleet_exporter_build_info", (("version", app[REFRESHER]._version),)) in stale
    private_pg.server.start()
    execute(
        dsn,
        "INSERT INTO audit_log (product_id, action)"
        " SELECT %(p)s, 'destroy' FROM generate_series(1, 7)",
        {"p": product},
    )
    await wait_until(lambda: _status_is(client, "/metrics", 200), timeout_s=15, what="recovery")
    await app[REFRESHER].refresh_once()
    assert lifecycle_counts(await scrape(client)) == audit_counts_by_slug(dsn)


async def test_a_locked_table_fails_the_refresh_cleanly_and_the_next_one_succeeds(
    aiohttp_client: ClientFactory, private_pg: Any
) -> None:
    dsn = private_pg.dsn
    insert_product(dsn, slug="acme", api_key=KEY)
    app = create_app(make_settings(dsn, database={"statement_timeout_s": 0.5}))
    client: TestClient = await aiohttp_client(app)
    refresher = app[REFRESHER]
    assert await refresher.refresh_until_counted()
    locker = psycopg2.connect(dsn)
    try:
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE engines IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            assert not await refresher.refresh_once()
            assert time.monotonic() - started < 3
    finally:
        locker.rollback()
        locker.close()
    samples = await scrape(client)
    assert samples[("engine_fleet_exporter_refresh_errors_total", (("stage", "engines"),))] == 1
    assert samples[("engine_fleet_database_up", ())] == 1
    assert exporter_sessions(dsn, "state <> 'idle'") == 0
    assert await refresher.refresh_once()


async def test_exporter_connections_are_read_only_and_named(
    aiohttp_client: ClientFactory, fleet_db: Any
) -> None:
    app = create_app(make_settings(fleet_db.dsn))
    await aiohttp_client(app)
    assert await app[REFRESHER].refresh_until_counted()
    assert exporter_sessions(fleet_db.dsn, "datname = current_database()") >= 1
    with pytest.raises(DatabaseUnavailable, match="read-only"):
        async with app[DATABASE].read_transaction() as tx:
            await tx.fetch_all(Statement("write", "CREATE TABLE should_fail (x int)"))
    assert fetch_value(fleet_db.dsn, "SELECT to_regclass('should_fail')") is None
