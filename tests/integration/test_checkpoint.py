"""The checkpoint on a real PostgreSQL: a restart resumes exactly, and a checkpoint that does
not provably belong to the data is rejected with one line and counted from scratch."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from exporter.db import Database
from exporter.refresher import Refresher
from tests.conftest import PgServer, fleet_database
from tests.support.counts import audit_counts_by_product, snapshot_counts
from tests.support.db import FleetDatabase, execute, insert_product
from tests.support.service import make_settings

KEY = "pk-sept-acme-" + "a" * 40
ROWS = 5_000


def _exported(refresher: Refresher) -> dict[tuple[str, str], int]:
    """The published lifetime counts, which must be totals."""
    snapshot = refresher.published.snapshot
    assert snapshot is not None
    assert snapshot.audit_counted
    return snapshot_counts(refresher)


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
    assert json.loads(checkpoint.read_text())["version"] == 2
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
            assert _exported(refresher) == audit_counts_by_product(dsn)
            held.commit()
            assert await refresher.refresh_once()
            assert _exported(refresher) == audit_counts_by_product(dsn)
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
    assert json.loads(checkpoint.read_text())["backfill"]["next_hi"] == ROWS - 2_000

    database = Database(settings.database)
    second = Refresher(database, settings, version="test")
    try:
        assert await second.refresh_once()
        resumed = second.audit.backfill
        assert resumed is not None
        assert resumed.next_hi == ROWS - 2_000
        assert not second.audit.counted
        assert await second.refresh_until_counted()
        assert _exported(second) == audit_counts_by_product(dsn)
    finally:
        await database.close()


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


def _empty(dsn: str, product: str) -> None:
    execute(dsn, "TRUNCATE audit_log RESTART IDENTITY")


CHANGED_CRASH_ACTIONS = {"actions": {"crash": ["health_failed", "wake"]}}


@pytest.mark.parametrize(
    ("change_data", "change_file", "restart_with", "reason"),
    [
        pytest.param(
            _truncate_restart_identity, None, {}, "high_water_row_changed", id="truncate-refill"
        ),
        pytest.param(_empty, None, {}, "high_water_row_missing", id="truncate-empty"),
        pytest.param(_rewind, None, {}, "high_water_row_changed", id="rewind-reusing-ids"),
        pytest.param(
            None, None, CHANGED_CRASH_ACTIONS, "counting_settings_changed", id="other-actions"
        ),
        pytest.param(None, _truncate_file, {}, "damaged", id="truncated-json"),
        pytest.param(None, _corrupt, {}, "damaged", id="corrupted-state"),
        pytest.param(None, lambda p: p.write_text("{}"), {}, "damaged", id="not-a-checkpoint"),
    ],
)
async def test_a_checkpoint_that_no_longer_fits_is_rejected_and_the_log_counted_exactly(
    fleet_db: FleetDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change_data: Callable[[str, str], None] | None,
    change_file: Callable[[Path], None] | None,
    restart_with: dict[str, Any],
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
    restarted = await _count(dsn, checkpoint, **restart_with)
    assert _rejections(caplog) == [reason]
    assert _exported(restarted) == audit_counts_by_product(dsn)


async def test_a_checkpoint_from_another_database_is_rejected(
    fleet_db: FleetDatabase, pg_server: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "audit.json"
    _fleet(fleet_db.dsn)
    await _count(fleet_db.dsn, checkpoint)
    with fleet_database(pg_server) as other:
        _fleet(other.dsn)
        restarted = await _count(other.dsn, checkpoint)
        assert _rejections(caplog) == ["other_database"]
        assert _exported(restarted) == audit_counts_by_product(other.dsn)


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
    assert _exported(restarted) == audit_counts_by_product(fleet_db.dsn)
