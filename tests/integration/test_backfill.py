"""Start-up on a long audit history, on a real PostgreSQL: fleet state at once, the history
counted in bounded chunks between refreshes, never a partial count shown as a total."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient

from exporter.api import REFRESHER
from exporter.app import create_app
from exporter.db import Database
from exporter.domain import EventCategory, average_ms
from exporter.refresher import Refresher
from tests.support.counts import (
    audit_counts_by_product,
    audit_counts_by_slug,
    lifecycle_counts,
    scrape,
    snapshot_counts,
)
from tests.support.db import (
    execute,
    fetch_all,
    fetch_value,
    insert_engine,
    insert_product,
    write_audit_rows,
)
from tests.support.service import make_settings

KEY = "pk-sept-acme-" + "a" * 40
HISTORY_ROWS = 30_000
ClientFactory = Any


def _narrow_chunks(refresher: Refresher, span: int) -> None:
    """Chunks of ``span`` ids (with ``next_span`` patched to keep them so): many chunks on a
    history small enough for a test."""
    plan = refresher.audit.backfill
    assert plan is not None
    plan.span = span


@pytest.fixture
def history(fleet_db: Any) -> dict[str, Any]:
    """A product with engines and a history of audit rows with holes (rolled-back ids)."""
    dsn = fleet_db.dsn
    product = insert_product(dsn, slug="acme", api_key=KEY)
    insert_engine(dsn, product_id=product, user_id="u1", status="running")
    insert_engine(dsn, product_id=product, user_id="u2", status="failed")
    execute(
        dsn,
        "INSERT INTO audit_log (product_id, action, duration_ms, timestamp)"
        " SELECT %(p)s, (ARRAY['provision', 'destroy', 'health_failed', 'wake'])[1 + i %% 4],"
        "        CASE WHEN i %% 4 = 0 THEN 500 + i %% 9000 END,"
        "        now() - (i || ' seconds')::interval"
        " FROM generate_series(1, %(n)s) AS i",
        {"p": product, "n": HISTORY_ROWS},
    )
    execute(dsn, "DELETE FROM audit_log WHERE id % 1000 = 7")
    return {"dsn": dsn, "product": product}


async def test_fleet_state_is_served_at_once_and_audit_figures_only_once_counted(
    aiohttp_client: ClientFactory, history: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.backfill.next_span", lambda *_: 7_001)
    app = create_app(make_settings(history["dsn"]), refresh_in_background=False)
    client: TestClient = await aiohttp_client(app)
    refresher = app[REFRESHER]
    headers = {"X-Platform-Key": KEY}
    assert await refresher.refresh_once()
    _narrow_chunks(refresher, 7_001)

    status = await client.get("/status", headers=headers)
    assert status.status == 200
    assert (await status.json())["by_status"]["failed"] == 1
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready", "audit": "backfilling", "audit_progress": 0}
    metrics = await client.get("/metrics", headers=headers)
    assert metrics.status == 503
    assert int(metrics.headers["Retry-After"]) >= 1
    error = (await metrics.json())["error"]
    assert error["code"] == "AUDIT_BACKFILL_RUNNING"
    assert "0% done" in error["message"]
    assert (await client.get("/metrics", headers={"X-Platform-Key": "nope"})).status == 401
    samples = await scrape(client)
    assert samples[("engine_fleet_engines", (("product", "acme"), ("status", "failed")))] == 1
    assert samples[("engine_fleet_exporter_audit_backfill_progress_ratio", ())] == 0
    assert not any(name.startswith("engine_fleet_lifecycle") for name, _ in samples)
    assert not any(name.startswith("engine_fleet_boot_duration") for name, _ in samples)

    chunks = 0
    while refresher.audit.backfilling:
        assert await refresher.backfill_once()
        chunks += 1
        if refresher.audit.backfilling:
            assert await refresher.refresh_once()
            progress = (await (await client.get("/readyz")).json())["audit_progress"]
            assert 0 < progress < 1
            assert (await client.get("/metrics", headers=headers)).status == 503
            assert not lifecycle_counts(await scrape(client))
    assert chunks == 5
    counted_but_not_yet_published = await client.get("/readyz")
    assert (await counted_but_not_yet_published.json())["audit"] == "backfilling"
    assert (await client.get("/metrics", headers=headers)).status == 503
    assert await refresher.refresh_once()

    assert await (await client.get("/readyz")).json() == {
        "status": "ready",
        "audit": "counted",
        "audit_progress": 1,
    }
    body = await (await client.get("/metrics", headers=headers)).json()
    truth = audit_counts_by_slug(history["dsn"])
    assert body["total_provisions"] == truth[("acme", "provision")]
    assert body["total_destroys"] == truth[("acme", "destroy")]
    samples = await scrape(client)
    assert lifecycle_counts(samples) == truth
    assert samples[("engine_fleet_exporter_audit_backfill_progress_ratio", ())] == 1
    boots = samples[("engine_fleet_boot_duration_seconds_count", (("product", "acme"),))]
    assert boots == truth[("acme", "provision")]


async def test_a_failed_chunk_is_retried_alone_and_the_count_stays_exact(
    aiohttp_client: ClientFactory, history: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.backfill.next_span", lambda *_: 10_000)
    dsn = history["dsn"]
    app = create_app(
        make_settings(dsn, refresh={"backfill_statement_s": 0.5}), refresh_in_background=False
    )
    client: TestClient = await aiohttp_client(app)
    refresher = app[REFRESHER]
    assert await refresher.refresh_once()
    _narrow_chunks(refresher, 10_000)
    assert await refresher.backfill_once()
    plan = refresher.audit.backfill
    assert plan is not None
    counted_down_to = plan.next_hi
    locker = psycopg2.connect(dsn)
    try:
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
        assert not await refresher.backfill_once()
    finally:
        locker.rollback()
        locker.close()
    assert plan.next_hi == counted_down_to
    assert await refresher.refresh_once()
    samples = await scrape(client)
    assert samples[("engine_fleet_exporter_refresh_errors_total", (("stage", "backfill"),))] == 1
    while refresher.audit.backfilling:
        assert await refresher.backfill_once()
    assert await refresher.refresh_once()
    assert lifecycle_counts(await scrape(client)) == audit_counts_by_slug(dsn)


async def test_writers_committing_out_of_order_during_the_backfill_are_counted_once(
    aiohttp_client: ClientFactory, history: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.backfill.next_span", lambda *_: 3_001)
    dsn = history["dsn"]
    products = [history["product"]]
    products += [insert_product(dsn, slug=f"p{i}", api_key=f"{KEY}-{i}") for i in range(2)]
    held = psycopg2.connect(dsn)
    with held.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_log (product_id, action) VALUES (%s, 'provision')", (products[0],)
        )
    execute(dsn, "INSERT INTO audit_log (product_id, action) VALUES (%s, 'wake')", (products[1],))
    app = create_app(make_settings(dsn), refresh_in_background=False)
    client: TestClient = await aiohttp_client(app)
    refresher = app[REFRESHER]
    threads = [
        threading.Thread(target=write_audit_rows, args=(dsn, products, 700 + n, 40))
        for n in range(3)
    ]
    try:
        assert await refresher.refresh_once()
        _narrow_chunks(refresher, 3_001)
        for thread in threads:
            thread.start()
        while refresher.audit.backfilling or any(thread.is_alive() for thread in threads):
            if refresher.audit.backfilling:
                assert await refresher.backfill_once()
            assert await refresher.refresh_once()
            if not refresher.audit.backfilling:
                held.commit()
    finally:
        for thread in threads:
            thread.join()
        held.close()
    assert await refresher.refresh_once()
    assert lifecycle_counts(await scrape(client)) == audit_counts_by_slug(dsn)


_CHUNK_FOLLOW_UPS = {
    "missing_ids": "%lag(id,%",
    "recent_boots": "%row_number() OVER (PARTITION BY product_id ORDER BY id DESC)%",
    "last_hour": "%FROM audit_log%WHERE id BETWEEN%AND timestamp >%",
}
"""The chunk statements after the totals, as ``pg_stat_statements`` shows their text."""


def _follow_up_calls(pg_server: Any, dsn: str) -> dict[str, int]:
    admin = pg_server.admin_dsn()
    execute(admin, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    database = fetch_value(dsn, "SELECT current_database()")
    return {
        name: int(
            fetch_value(
                admin,
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %(db)s)"
                " AND query LIKE %(text)s",
                {"db": database, "text": text},
            )
        )
        for name, text in _CHUNK_FOLLOW_UPS.items()
    }


async def test_chunks_of_older_history_read_only_their_totals_and_the_counts_stay_exact(
    fleet_db: Any, pg_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newest first: the first chunk holds the rolling hour and fills the boot samples, so
    the dense, older chunks after it run their totals alone; the one chunk with a hole (a
    rolled-back id) also reads its missing ids."""
    monkeypatch.setattr("exporter.backfill.next_span", lambda *_: 1_000)
    dsn = fleet_db.dsn
    product = insert_product(dsn, slug="acme", api_key=KEY)
    execute(
        dsn,
        "INSERT INTO audit_log (product_id, action, duration_ms, timestamp)"
        " SELECT %(p)s, (ARRAY['provision', 'destroy', 'wake'])[1 + i %% 3],"
        "        CASE WHEN i %% 3 = 0 THEN 500 + i END,"
        "        now() - ((6000 - i) * interval '10 seconds')"
        " FROM generate_series(1, 6000) AS i",
        {"p": product},
    )
    execute(dsn, "DELETE FROM audit_log WHERE id = 1500")
    before = _follow_up_calls(pg_server, dsn)
    settings = make_settings(dsn, metrics={"boot_sample_size": 50})
    database = Database(settings.database)
    refresher = Refresher(database, settings, version="test")
    try:
        assert await refresher.refresh_once()
        _narrow_chunks(refresher, 1_000)
        assert await refresher.refresh_until_counted()
        published = refresher.published.snapshot
        assert published is not None
        fleet = published.fleets[product]
    finally:
        await database.close()
    after = _follow_up_calls(pg_server, dsn)
    assert {name: after[name] - before[name] for name in after} == {
        "missing_ids": 1,
        "recent_boots": 1,
        "last_hour": 1,
    }
    assert snapshot_counts(refresher) == audit_counts_by_product(dsn)
    newest_boots = fetch_all(
        dsn,
        "SELECT duration_ms FROM audit_log WHERE action = 'provision' ORDER BY id DESC LIMIT 50",
    )
    assert fleet.avg_boot_ms == average_ms(d for (d,) in newest_boots)
    in_window = fetch_value(
        dsn,
        "SELECT count(*) FROM audit_log WHERE action = 'provision'"
        " AND timestamp > %(now)s - interval '1 hour'",
        {"now": published.taken_at},
    )
    assert fleet.last_hour[EventCategory.PROVISION] == in_window
