"""Checkpoint encoding and validation, without a database: a round trip keeps every figure,
and anything that does not provably belong to the same data is refused with a reason."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from exporter.audit import AuditRow, AuditTally, IdGap, IdGapTracker
from exporter.backfill import BackfillPlan
from exporter.checkpoint import (
    Checkpoint,
    CheckpointDamaged,
    DataIdentity,
    decode,
    encode,
    rejection,
)
from exporter.domain import ActionCategories

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CATEGORIES = ActionCategories(("provision",), ("destroy",), ("health_failed",), ("restart",))
IDENTITY = DataIdentity("7301", 1, 16384, 16390, 120, "9f86d081")
COUNTING = {"actions": {"provision": ["provision"]}, "metrics": {"boot_sample_size": 2}}


def _tally() -> AuditTally:
    tally = AuditTally(CATEGORIES, (1.0, 5.0), 2)
    for audit_id, action, ms in ((1, "provision", 900), (2, "provision", 4000), (3, "odd", None)):
        tally.add_row(AuditRow(audit_id, "p1", action, T0, ms), T0)
    tally.add_row(AuditRow(4, "p2", "health_failed", T0 - timedelta(minutes=5), None), T0)
    tally.add_row(AuditRow(5, "p1", "provision", T0, 7000), T0)
    return tally


def _checkpoint() -> Checkpoint:
    tracker = IdGapTracker(120, [IdGap(3, 4, T0, fence_xid=900), IdGap(100, 101, T0)])
    return Checkpoint(
        identity=IDENTITY,
        counting=COUNTING,
        tracker=tracker.to_state(),
        tally=_tally().to_state(),
        backfill=BackfillPlan(low=1, high=100, next_hi=60, span=20).to_state(),
    )


def test_a_round_trip_keeps_the_tally_the_gaps_and_the_backfill() -> None:
    restored = decode(encode(_checkpoint()))
    tally = AuditTally(CATEGORIES, (1.0, 5.0), 2)
    tally.restore(restored.tally)
    original = _tally()
    for product in ("p1", "p2"):
        assert tally.product_audit(product, T0) == original.product_audit(product, T0)
    tracker = IdGapTracker.from_state(restored.tracker)
    assert tracker.high_water == 120
    assert [(g.lo, g.hi, g.first_missing_at, g.fence_xid) for g in tracker.gaps] == [
        (3, 4, T0, 900),
        (100, 101, T0, None),
    ]
    assert restored.backfill is not None
    assert BackfillPlan.from_state(restored.backfill) == BackfillPlan(1, 100, 60, 20)
    assert restored.identity == IDENTITY


def test_the_same_data_and_settings_are_accepted() -> None:
    assert rejection(_checkpoint(), IDENTITY, COUNTING) is None


@pytest.mark.parametrize(
    ("current", "reason"),
    [
        (replace(IDENTITY, system_identifier="7302"), "other_cluster"),
        (replace(IDENTITY, timeline=2), "other_timeline"),
        (replace(IDENTITY, database_oid=1), "other_database"),
        (replace(IDENTITY, audit_log_oid=1), "other_audit_log_table"),
        (replace(IDENTITY, high_water_fingerprint=None), "high_water_row_missing"),
        (replace(IDENTITY, high_water_fingerprint="0000"), "high_water_row_changed"),
    ],
)
def test_other_data_is_refused_with_its_reason(current: DataIdentity, reason: str) -> None:
    assert rejection(_checkpoint(), current, COUNTING) == reason


def test_other_counting_settings_are_refused() -> None:
    other = {**COUNTING, "metrics": {"boot_sample_size": 3}}
    assert rejection(_checkpoint(), IDENTITY, other) == "counting_settings_changed"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": "something-else", "version": 2}',
        encode(_checkpoint()).replace(b'"version":2', b'"version":1'),
        json.dumps({"format": "engine-fleet-exporter/audit-checkpoint", "version": 2}).encode(),
        encode(_checkpoint())[:-20],
    ],
)
def test_a_damaged_file_is_refused_as_such(data: bytes) -> None:
    with pytest.raises(CheckpointDamaged):
        decode(data)


@pytest.mark.parametrize(
    "state",
    [
        {"high_water": 10, "gaps": [[5, 3, T0.isoformat(), None]]},
        {"high_water": 10, "gaps": [[5, 30, T0.isoformat(), None]]},
        {"high_water": 10, "gaps": [[1, 2, "2026-11-28T12:00:00", None]]},
        {"high_water": -1, "gaps": []},
        {"high_water": True, "gaps": []},
        {"gaps": []},
    ],
)
def test_an_inconsistent_tracker_state_is_refused(state: dict[str, object]) -> None:
    with pytest.raises((ValueError, KeyError)):
        IdGapTracker.from_state(state)


def test_a_histogram_with_other_buckets_is_refused() -> None:
    state = _tally().to_state()
    tally = AuditTally(CATEGORIES, (1.0, 5.0, 10.0), 2)
    with pytest.raises(ValueError, match="boot buckets"):
        tally.restore(state)


def test_a_histogram_whose_count_is_not_its_buckets_total_is_refused() -> None:
    state = _tally().to_state()
    histograms = state["histograms"]
    assert isinstance(histograms, dict)
    counts, sum_ms, count = histograms["p1"]
    assert count == sum(counts) == 3
    histograms["p1"] = [counts, sum_ms, count + 1]
    with pytest.raises(ValueError, match="boots, but the buckets hold"):
        AuditTally(CATEGORIES, (1.0, 5.0), 2).restore(state)
