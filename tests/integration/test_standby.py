"""The exporter on a real streaming hot standby (``pg_basebackup -R``): counts stay exact
however replay stalls, and data from a replica that lags too far is stale, not fresh."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient

from exporter.api import REFRESHER
from exporter.app import create_app
from exporter.db import Database
from exporter.refresher import Refresher
from tests.integration.test_cli import _cli, _config
from tests.support.counts import audit_counts_by_product, scrape, snapshot_counts
from tests.support.db import execute, insert_audit, insert_product, write_audit_rows
from tests.support.replica import ReplicatedPostgres
from tests.support.service import make_settings, wait_until

KEY = "pk-sept-acme-" + "a" * 40
ClientFactory = Any


async def test_counts_on_a_standby_stay_exact_under_out_of_order_writers_and_a_paused_replay(
    replicated_pg: ReplicatedPostgres,
) -> None:
    primary = replicated_pg.primary_dsn
    products = [insert_product(primary, slug=f"p{i}", api_key=f"{KEY}-{i}") for i in range(3)]
    execute(
        primary,
        "INSERT INTO audit_log (product_id, action) SELECT %s, 'provision'"
        " FROM generate_series(1, 2000)",
        (products[0],),
    )
    replicated_pg.wait_replayed()
    settings = make_settings(replicated_pg.standby_dsn)
    database = Database(settings.database)
    refresher = Refresher(database, settings, version="test")
    threads = [
        threading.Thread(target=write_audit_rows, args=(primary, products, 900 + n, 60))
        for n in range(3)
    ]
    try:
        assert await refresher.refresh_until_counted()
        for thread in threads:
            thread.start()
        refreshes = 0
        while any(thread.is_alive() for thread in threads):
            assert await refresher.refresh_once()
            refreshes += 1
            if refreshes == 3:
                replicated_pg.pause_replay()
            elif refreshes == 10:
                replicated_pg.resume_replay()
        replicated_pg.resume_replay()
        for thread in threads:
            thread.join()
        replicated_pg.wait_replayed()
        assert await refresher.refresh_once()
        assert refreshes > 10, "the writers finished before replay was paused and resumed"
        assert snapshot_counts(refresher) == audit_counts_by_product(primary)
    finally:
        for thread in threads:
            thread.join()
        await database.close()


async def test_a_gap_outlives_a_replay_paused_past_the_grace_and_its_row_is_counted(
    replicated_pg: ReplicatedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer takes its id with ``nextval`` well before it inserts; replay pauses in
    between for longer than the grace. On the wall clock the gap would be fenced with the
    standby's stalled next transaction id and dropped, losing the row; on the replay clock
    it stays until replay has caught up."""
    grace = timedelta(seconds=1)
    monkeypatch.setattr("exporter.audit.ID_ALLOCATION_GRACE", grace)
    primary = replicated_pg.primary_dsn
    product = insert_product(primary, slug="acme", api_key=KEY)
    replicated_pg.wait_replayed()
    settings = make_settings(replicated_pg.standby_dsn)
    database = Database(settings.database)
    refresher = Refresher(database, settings, version="test")
    late = psycopg2.connect(primary)
    try:
        assert await refresher.refresh_until_counted()
        # This insert's nextval writes the sequence's WAL record (with a transaction id) and
        # covers the next 32 values, so the writer's nextval below takes its id without one.
        insert_audit(primary, product_id=product, action="start")
        with late.cursor() as cursor:
            cursor.execute("SELECT nextval('audit_log_id_seq')")
            (reserved,) = cursor.fetchone()
            cursor.execute("SELECT pg_current_xact_id_if_assigned() IS NULL")
            assert cursor.fetchone() == (True,), "the writer must not hold a transaction id yet"
        insert_audit(primary, product_id=product, action="provision")
        replicated_pg.wait_replayed()
        assert await refresher.refresh_once()
        tracker = refresher.audit.tracker
        assert tracker is not None
        assert tracker.pending_ids == 1
        replicated_pg.pause_replay()
        with late.cursor() as cursor:
            cursor.execute(
                "INSERT INTO audit_log (id, product_id, action) VALUES (%s, %s, 'destroy')",
                (reserved, product),
            )
        late.commit()
        insert_audit(primary, product_id=product, action="wake")
        past_grace = time.monotonic() + 3 * grace.total_seconds()
        while time.monotonic() < past_grace:
            assert await refresher.refresh_once()
        assert tracker.pending_ids == 1, "a paused replay must not retire the gap"
        replicated_pg.resume_replay()
        replicated_pg.wait_replayed()
        for _ in range(3):
            assert await refresher.refresh_once()
        assert snapshot_counts(refresher) == audit_counts_by_product(primary)
        assert snapshot_counts(refresher)[(product, "destroy")] == 1
    finally:
        replicated_pg.resume_replay()
        late.close()
        await database.close()


def _keep_writing(dsn: str, product: str, stop: threading.Event) -> None:
    """A primary that keeps committing (so the standby's lag shows), for at most 60 s."""
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        insert_audit(dsn, product_id=product, action="health_check")
        stop.wait(0.05)


async def test_a_paused_replay_makes_the_data_stale_and_resumed_replay_fresh_again(
    aiohttp_client: ClientFactory, replicated_pg: ReplicatedPostgres
) -> None:
    primary = replicated_pg.primary_dsn
    product = insert_product(primary, slug="acme", api_key=KEY)
    replicated_pg.wait_replayed()
    app = create_app(
        make_settings(
            replicated_pg.standby_dsn, refresh={"interval_s": 0.2, "max_staleness_s": 1.5}
        )
    )
    client: TestClient = await aiohttp_client(app)

    async def status_is(path: str, status: int) -> bool:
        return (await client.get(path, headers={"X-Platform-Key": KEY})).status == status

    await wait_until(lambda: status_is("/readyz", 200), what="ready on the standby")
    samples = await scrape(client)
    assert samples[("engine_fleet_database_replication_lag_seconds", ())] < 1.5
    stop = threading.Event()
    writer = threading.Thread(target=_keep_writing, args=(primary, product, stop))
    writer.start()
    try:
        replicated_pg.pause_replay()

        async def lagging() -> bool:
            samples = await scrape(client)
            return samples[("engine_fleet_database_replication_lag_seconds", ())] > 1.5

        await wait_until(lagging, what="the paused replay to show as lag")
        assert (await client.get("/readyz")).status == 503
        body = await (await client.get("/status", headers={"X-Platform-Key": KEY})).json()
        assert body["error"]["code"] == "FLEET_DATA_STALE"
        samples = await scrape(client)
        assert samples[("engine_fleet_database_up", ())] == 1
        assert not any(name == "engine_fleet_engines" for name, _ in samples)
        replicated_pg.resume_replay()
        await wait_until(lambda: status_is("/status", 200), what="fresh again after replay")
        assert (await client.get("/readyz")).status == 200
        samples = await scrape(client)
        assert samples[("engine_fleet_database_replication_lag_seconds", ())] < 1.5
        assert any(name == "engine_fleet_engines" for name, _ in samples)
    finally:
        stop.set()
        writer.join()
        replicated_pg.resume_replay()
    assert app[REFRESHER].audit.counted


def test_check_says_primary_or_standby_and_the_lag(
    replicated_pg: ReplicatedPostgres, tmp_path: Any
) -> None:
    on_primary = _cli("check", "--config", str(_config(tmp_path, replicated_pg.primary_dsn)))
    assert "ok   database: primary (not in recovery)" in on_primary.stdout, on_primary.stdout
    on_standby = _cli("check", "--config", str(_config(tmp_path, replicated_pg.standby_dsn)))
    assert "ok   database: hot standby, replication lag " in on_standby.stdout, on_standby.stdout
