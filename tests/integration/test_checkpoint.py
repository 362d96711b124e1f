"""The checkpoint on a real PostgreSQL: a restart resumes exactly, and a checkpoint that does
not provably belong to the data is rejected with one line and counted from scratch."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from exporter.db import Database
from exporter.pgcluster import apply_schema
from exporter.refresher import Refresher
from tests.conftest import FleetDatabase, PgServer
from tests.support.db import execute, fetch_all, insert_product
from tests.support.service import make_settings

KEY = "pk-sept-acme-" + "a" * 40
ROWS = 5_000


def _ground_truth(dsn: str) -> dict[tuple[str, str], int]:
    rows = fetch_all(
        dsn,
        "SELECT product_id::text, action, count(*) FROM audit_log"
        " WHERE product_id IS NOT NULL GROUP BY 1, 2",
    )
    return {(product_id, action): int(n) for product_id, action, n in rows}


def _exported(refresher: Refresher) -> dict[tuple[str, str], int]:
    snapshot = refresher.published.snapshot
    assert snapshot is not None
    assert snapshot.audit_counted
    return {
        (product_id, action): count
        for product_id, fleet in snapshot.fleets.items()
        for action, count in fleet.lifetime_by_action.items()
        if count
    }


def _add_history(dsn: str, product: str, rows: int) -> None:
    execute(
        dsn,
        "INSERT INTO audit_log (product_id, action, duration_ms)"
        " SELECT %(p)s, (ARRAY['provision', 'destroy', 'wake'])[1 + i %% 3],"
        "        CASE WHEN i %% 3 = 0 THEN 100 + i END"
        " FROM generate_series(1, %(n)s) AS i",
        {"p": product, "n": rows},
    )


def _fleet(dsn: str) -> str:
    product = insert_product(dsn, slug="acme", api_key=KEY)
    _add_history(dsn, product, ROWS)
    return product


async def _count(dsn: str, checkpoint: Path, **sections: Any) -> Refresher:
    """Start a refresher with the checkpoint, count everything, refresh once more (which
    writes the checkpoint), and stop: one run of the exporter."""
    settings = make_settings(dsn, state={"checkpoint_path": str(checkpoint)}, **sections)
    database = Database(settings.database)
    refresher = Refresher(database, settings, version="test")
    try:
        assert await refresher.refresh_until_counted()
        refresher.audit.request_checkpoint()
        assert await refresher.refresh_once()
    finally:
        await database.close()
    return refresher


def _rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(r.__dict__["exporter_fields"]["reason"])
        for r in caplog.records
        if r.getMessage() == "checkpoint_rejected"
    ]


async def test_a_restart_resumes_from_the_checkpoint_without_a_backfill(
    fleet_db: FleetDatabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = fleet_db.dsn
    product = _fleet(dsn)
    checkpoint = tmp_path / "state" / "audit.json"
    await _count(dsn, checkpoint)
    assert json.loads(checkpoint.read_text())["version"] == 1
    held = psycopg2.connect(dsn)
    try:
        with held.cursor() as cursor:
            cursor.execute(
                "INSERT INTO audit_log (product_id, action) VALUES (%s, 'stop')", (product,)
            )
        _add_history(dsn, product, 700)

        settings = make_settings(dsn, state={"checkpoint_path": str(checkpoint)})
        database = Database(settings.database)
        refresher = Refresher(database, settings, version="test")
        try:
            assert await refresher.refresh_once()
            assert refresher.audit.counted
            assert refresher.audit.backfill is None or refresher.audit.backfill.done
            assert _exported(refresher) == _ground_truth(dsn)
            held.commit()
            assert await refresher.refresh_once()
            assert _exported(refresher) == _ground_truth(dsn)
        finally:
            await database.close()
    finally:
        held.close()
    assert _rejections(caplog) == []


async def test_a_checkpoint_written_mid_backfill_resumes_the_backfill_where_it_stood(
    fleet_db: FleetDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.backfill.next_span", lambda *_: 1_000)
    dsn = fleet_db.dsn
    _fleet(dsn)
    checkpoint = tmp_path / "audit.json"
    settings = make_settings(dsn, state={"checkpoint_path": str(checkpoint)})
    database = Database(settings.database)
    first = Refresher(database, settings, version="test")
    assert await first.refresh_once()
    plan = first.audit.backfill
    assert plan is not None
    plan.span = 1_000
    for _ in range(2):
        assert await first.backfill_once()
    first.audit.request_checkpoint()
    assert await first.refresh_once()
    await database.close()
    assert json.loads(checkpoint.read_text())["backfill"]["next_lo"] == 2_001

    database = Database(settings.database)
    second = Refresher(database, settings, version="test")
    try:
        assert await second.refresh_once()
        resumed = second.audit.backfill
        assert resumed is not None
        assert resumed.next_lo == 2_001
        assert not second.audit.counted
        assert await second.refresh_until_counted()
        assert _exported(second) == _ground_truth(dsn)
    finally:
        await database.close()


def _other_database(pg_server: PgServer) -> str:
    name = f"fleet_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(pg_server.admin_dsn())
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        connection.close()
    dsn = pg_server.admin_dsn(name)
    apply_schema(dsn)
    return dsn


def _truncate_restart_identity(dsn: str, product: str) -> None:
    execute(dsn, "TRUNCATE audit_log RESTART IDENTITY")
    _add_history(dsn, product, ROWS + 10)


def _rewind(dsn: str, product: str) -> None:
    """Like a point-in-time restore to before the last rows, then new writes reusing ids."""
    execute(dsn, "DELETE FROM audit_log WHERE id > %s", (ROWS - 100,))
    execute(dsn, "SELECT setval('audit_log_id_seq', %s)", (ROWS - 100,))
    _add_history(dsn, product, 300)


def _corrupt(path: Path) -> None:
    document = json.loads(path.read_text())
    document["tracker"]["gaps"] = [[5, 3, "yesterday", None]]
    path.write_text(json.dumps(document))


def _truncate_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize(
    ("change_data", "change_file", "reason"),
    [
        pytest.param(_truncate_restart_identity, None, "high_water_row_changed", id="truncate"),
        pytest.param(_rewind, None, "high_water_row_changed", id="rewind-reusing-ids"),
        pytest.param(None, _truncate_file, "damaged", id="truncated-json"),
        pytest.param(None, _corrupt, "damaged", id="corrupted-state"),
        pytest.param(None, lambda p: p.write_text("{}"), "damaged", id="not-a-checkpoint"),
    ],
)
async def test_a_checkpoint_that_no_longer_fits_is_rejected_and_the_log_counted_exactly(
    fleet_db: FleetDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change_data: Callable[[str, str], None] | None,
    change_file: Callable[[Path], None] | None,
    reason: str,
) -> None:
    dsn = fleet_db.dsn
    product = _fleet(dsn)
    checkpoint = tmp_path / "audit.json"
    await _count(dsn, checkpoint)
    if change_data is not None:
        change_data(dsn, product)
    if change_file is not None:
        change_file(checkpoint)
    restarted = await _count(dsn, checkpoint)
    assert _rejections(caplog) == [reason]
    assert _exported(restarted) == _ground_truth(dsn)


async def test_a_checkpoint_of_an_emptied_log_is_rejected(
    fleet_db: FleetDatabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = fleet_db.dsn
    _fleet(dsn)
    checkpoint = tmp_path / "audit.json"
    await _count(dsn, checkpoint)
    execute(dsn, "TRUNCATE audit_log RESTART IDENTITY")
    restarted = await _count(dsn, checkpoint)
    assert _rejections(caplog) == ["high_water_row_missing"]
    assert _exported(restarted) == {}


async def test_changed_counting_settings_reject_the_checkpoint(
    fleet_db: FleetDatabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = fleet_db.dsn
    _fleet(dsn)
    checkpoint = tmp_path / "audit.json"
    await _count(dsn, checkpoint)
    restarted = await _count(dsn, checkpoint, actions={"crash": ["health_failed", "wake"]})
    assert _rejections(caplog) == ["counting_settings_changed"]
    assert _exported(restarted) == _ground_truth(dsn)


async def test_a_checkpoint_from_another_database_is_rejected(
    fleet_db: FleetDatabase, pg_server: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "audit.json"
    _fleet(fleet_db.dsn)
    await _count(fleet_db.dsn, checkpoint)
    other = _other_database(pg_server)
    _fleet(other)
    restarted = await _count(other, checkpoint)
    assert _rejections(caplog) == ["other_database"]
    assert _exported(restarted) == _ground_truth(other)


async def test_a_checkpoint_from_another_cluster_is_rejected(
    fleet_db: FleetDatabase, private_pg: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "audit.json"
    _fleet(private_pg.dsn)
    await _count(private_pg.dsn, checkpoint)
    _fleet(fleet_db.dsn)
    caplog.set_level(logging.INFO)
    restarted = await _count(fleet_db.dsn, checkpoint)
    assert _rejections(caplog) == ["other_cluster"]
    assert _exported(restarted) == _ground_truth(fleet_db.dsn)
