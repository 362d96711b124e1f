"""Incremental audit counting: id gap bookkeeping and the running tally, without a database.

The model-based test plays a small MVCC database (sequence, transaction ids, commits,
rollbacks, snapshots) against ``IdGapTracker`` and checks every committed row is counted
exactly once and every gap is eventually retired.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.audit import (
    ID_ALLOCATION_GRACE,
    AuditRow,
    AuditTally,
    DbSnapshot,
    IdGap,
    IdGapTracker,
    bucket_thresholds_ms,
)
from exporter.audit_counter import ChunkFollowUps, chunk_follow_ups, count_chunk
from exporter.backfill import BackfillPlan, Chunk
from exporter.domain import ROLLING_WINDOW, ActionCategories, EventCategory
from exporter.queries import AuditChunk, AuditTotal

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CATEGORIES = ActionCategories(
    provision=("provision",),
    destroy=("destroy",),
    crash=("health_failed",),
    restart=("auto_restart_start",),
)


def _snapshot(at: datetime, xmin: int, next_xid: int | None) -> DbSnapshot:
    return DbSnapshot(started_at=at, observed_at=at, xmin=xmin, next_xid=next_xid)


def test_new_ids_move_the_high_water_mark_and_holes_become_gaps() -> None:
    tracker = IdGapTracker(high_water=10)
    tracker.advance([11, 12, 15, 18], _snapshot(T0, 100, 105))
    assert tracker.high_water == 18
    assert [(g.lo, g.hi) for g in tracker.gaps] == [(13, 14), (16, 17)]
    assert tracker.read_plan().after_id == 18


def test_a_late_commit_inside_a_gap_splits_it() -> None:
    tracker = IdGapTracker(high_water=10)
    tracker.advance([20], _snapshot(T0, 100, 105))
    tracker.advance([13, 17], _snapshot(T0 + timedelta(seconds=5), 100, 106))
    assert [(g.lo, g.hi) for g in tracker.gaps] == [(11, 12), (14, 16), (18, 19)]
    assert tracker.pending_ids == 7


def test_a_gap_is_kept_while_its_writers_may_still_commit() -> None:
    tracker = IdGapTracker(high_water=10)
    tracker.advance([12], _snapshot(T0, 100, 105))
    after_grace = T0 + ID_ALLOCATION_GRACE
    tracker.advance([], _snapshot(after_grace, 100, 107))
    assert tracker.gaps[0].fence_xid == 107
    tracker.advance([], _snapshot(after_grace + timedelta(seconds=5), 106, 110))
    assert [(g.lo, g.hi) for g in tracker.gaps] == [(11, 11)]


def test_a_gap_is_retired_once_every_possible_writer_has_finished() -> None:
    tracker = IdGapTracker(high_water=10)
    tracker.advance([12], _snapshot(T0, 100, 105))
    tracker.advance([], _snapshot(T0 + ID_ALLOCATION_GRACE, 100, 107))
    tracker.advance([], _snapshot(T0 + ID_ALLOCATION_GRACE * 2, 107, 109))
    assert tracker.gaps == []


def test_no_gap_is_retired_before_the_grace_period_even_when_idle() -> None:
    tracker = IdGapTracker(high_water=10)
    tracker.advance([12], _snapshot(T0, 105, 105))
    tracker.advance([], _snapshot(T0 + ID_ALLOCATION_GRACE - timedelta(seconds=1), 105, 105))
    assert [(g.lo, g.hi) for g in tracker.gaps] == [(11, 11)]
    tracker.advance([], _snapshot(T0 + ID_ALLOCATION_GRACE, 105, 105))
    assert tracker.gaps == []


def test_ids_a_backfill_chunk_found_missing_become_gaps_in_id_order() -> None:
    tracker = IdGapTracker(100, [IdGap(150, 151, T0)])
    later = T0 + timedelta(seconds=3)
    tracker.add_missing([(40, 40), (1, 4), (7, 6)], later)
    assert tracker.high_water == 100
    assert [(g.lo, g.hi, g.first_missing_at) for g in tracker.gaps] == [
        (1, 4, later),
        (40, 40, later),
        (150, 151, T0),
    ]


def test_on_a_standby_a_gap_ages_only_on_the_replay_clock() -> None:
    """The gap clock of a standby is the commit time of the last replayed transaction: while
    replay is paused it stands still, and no wall time passing can fence a gap."""
    tracker = IdGapTracker(high_water=10)
    replayed_at = T0
    tracker.advance([12], DbSnapshot(T0, replayed_at, 100, 105, in_recovery=True))
    for minutes in (1, 5, 30):
        paused = DbSnapshot(T0 + timedelta(minutes=minutes), replayed_at, 105, 105)
        tracker.advance([], paused)
        assert tracker.gaps[0].fence_xid is None
    caught_up = DbSnapshot(T0 + timedelta(minutes=31), T0 + ID_ALLOCATION_GRACE, 105, 109)
    tracker.advance([], caught_up)
    assert tracker.gaps[0].fence_xid == 109


def test_a_gap_seen_before_any_replay_is_clocked_from_the_first_replayed_commit() -> None:
    tracker = IdGapTracker(high_water=10)
    tracker.advance([12], DbSnapshot(T0, None, 100, 105, in_recovery=True))
    assert tracker.gaps[0].first_missing_at is None
    tracker.advance([], DbSnapshot(T0, T0 + timedelta(seconds=5), 100, 106, in_recovery=True))
    assert tracker.gaps[0].first_missing_at == T0 + timedelta(seconds=5)
    assert tracker.gaps[0].fence_xid is None
    late = T0 + timedelta(seconds=5) + ID_ALLOCATION_GRACE
    tracker.advance([], DbSnapshot(late, late, 100, 108, in_recovery=True))
    assert tracker.gaps[0].fence_xid == 108


def test_gap_ranges_keep_their_fence_when_split() -> None:
    tracker = IdGapTracker(10, [IdGap(1, 9, T0, fence_xid=77)])
    tracker.advance([5], _snapshot(T0, 10, 20))
    assert [(g.lo, g.hi, g.fence_xid) for g in tracker.gaps] == [(1, 4, 77), (6, 9, 77)]


FIRST_MODEL_XID = 1000


@dataclass
class _Txn:
    xid: int | None = None
    ids: list[int] = field(default_factory=list)
    allocated_at: datetime | None = None
    state: str = "running"


@dataclass
class _MvccModel:
    """Sequence + transaction ids + visibility, as PostgreSQL has them for one table."""

    rng: random.Random
    now: datetime = T0
    next_id: int = 1
    next_xid: int = FIRST_MODEL_XID
    txns: list[_Txn] = field(default_factory=list)
    commit_order: list[_Txn] = field(default_factory=list)

    def running(self) -> list[_Txn]:
        return [t for t in self.txns if t.state == "running"]

    def assign_xid(self, txn: _Txn) -> None:
        if txn.xid is None:
            txn.xid = self.next_xid
            self.next_xid += 1

    def step(self) -> None:
        elapsed = timedelta(seconds=self.rng.choice([0, 0, 1, 5, 20]))
        for txn in self.running():
            overdue = (
                txn.allocated_at is not None
                and self.now + elapsed >= txn.allocated_at + ID_ALLOCATION_GRACE
            )
            if txn.xid is None and overdue:
                self.assign_xid(txn)
        self.now += elapsed
        action = self.rng.random()
        running = self.running()
        if action < 0.25 or not running:
            txn = _Txn()
            if self.rng.random() < 0.5:
                self.assign_xid(txn)
            self.txns.append(txn)
        elif action < 0.55:
            txn = self.rng.choice(running)
            txn.ids.append(self.next_id)
            self.next_id += 1
            txn.allocated_at = txn.allocated_at or self.now
            if self.rng.random() < 0.7:
                self.assign_xid(txn)
        elif action < 0.65:
            txn = self.rng.choice(running)
            if txn.ids:
                self.assign_xid(txn)
            txn.state = "aborted"
        elif action < 0.7:
            self.next_id += self.rng.randint(1, 40)
        else:
            txn = self.rng.choice(running)
            if txn.ids:
                self.assign_xid(txn)
            txn.state = "committed"

    def snapshot(self) -> tuple[DbSnapshot, set[int]]:
        """As ``GetSnapshotData`` builds it: ``xmax`` is one past the latest *completed*
        transaction id, so the newest transactions may still be running at or above it, and
        ``xmin`` only looks at running transactions below ``xmax``."""
        finished = [t.xid for t in self.txns if t.state != "running" and t.xid is not None]
        xmax = max(finished, default=FIRST_MODEL_XID - 1) + 1
        running = [t.xid for t in self.running() if t.xid is not None and t.xid < xmax]
        xmin = min(running, default=xmax)
        visible = {i for t in self.txns if t.state == "committed" for i in t.ids}
        return _snapshot(self.now, xmin, self.next_xid), visible

    def finish_everything(self) -> None:
        for txn in self.running():
            self.assign_xid(txn)
            txn.state = "committed"


def _refresh(model: _MvccModel, tracker: IdGapTracker, counted: list[int]) -> None:
    snapshot, visible = model.snapshot()
    plan = tracker.read_plan()
    in_gaps = {
        i
        for i in visible
        for lo, hi in zip(plan.gap_los, plan.gap_his, strict=True)
        if lo <= i <= hi
    }
    after = {i for i in visible if i > plan.after_id}
    read = in_gaps | after
    counted.extend(read)
    tracker.advance(read, snapshot)


def _finish_and_check(model: _MvccModel, tracker: IdGapTracker, counted: list[int]) -> None:
    """Let every writer finish, refresh past the grace, and check the count is exact."""
    model.finish_everything()
    for _ in range(3):
        model.now += ID_ALLOCATION_GRACE
        _refresh(model, tracker, counted)
    committed = {i for t in model.txns if t.state == "committed" for i in t.ids}
    assert len(counted) == len(set(counted)), "a row was counted twice"
    assert set(counted) == committed, "a committed row was missed"
    assert tracker.gaps == [], "a permanent gap was never retired"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_every_committed_row_is_counted_exactly_once_and_gaps_drain(seed: int) -> None:
    model = _MvccModel(random.Random(seed))
    tracker = IdGapTracker(high_water=0)
    counted: list[int] = []
    for _ in range(model.rng.randint(5, 60)):
        for _ in range(model.rng.randint(0, 6)):
            model.step()
        _refresh(model, tracker, counted)
    _finish_and_check(model, tracker, counted)


def _count_chunk(
    model: _MvccModel, tracker: IdGapTracker, plan: BackfillPlan, counted: list[int]
) -> None:
    """One backfill chunk in its own snapshot: the visible ids of its range are counted, the
    others become gaps, as ``AuditCounter.apply_chunk`` does."""
    chunk = plan.next_chunk()
    assert chunk is not None
    snapshot, visible = model.snapshot()
    found = sorted(i for i in visible if chunk.lo <= i <= chunk.hi)
    counted.extend(found)
    missing, expected = [], chunk.lo
    for present in [*found, chunk.hi + 1]:
        if present > expected:
            missing.append((expected, present - 1))
        expected = present + 1
    tracker.add_missing(missing, snapshot.observed_at)
    plan.counted(chunk, 0.5, 2.0)
    plan.span = model.rng.randint(1, 12)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_a_history_counted_in_chunks_between_live_refreshes_is_exact(seed: int) -> None:
    """The exporter starts on a busy log: the first refresh only notes the highest visible
    id, and chunks of the ids up to it are counted in their own snapshots, interleaved with
    live refreshes and with writers still committing ids below and above it."""
    model = _MvccModel(random.Random(seed))
    for _ in range(model.rng.randint(0, 80)):
        model.step()
    snapshot, visible = model.snapshot()
    high = max(visible, default=0)
    low = min(visible, default=0)
    tracker = IdGapTracker(high, [IdGap(1, low - 1, snapshot.observed_at)] if low > 1 else [])
    plan = BackfillPlan.covering(low, high) if visible else BackfillPlan.covering(1, 0)
    plan.span = model.rng.randint(1, 12)
    counted: list[int] = []
    while not plan.done or model.rng.random() < 0.7:
        for _ in range(model.rng.randint(0, 6)):
            model.step()
        if not plan.done and model.rng.random() < 0.6:
            _count_chunk(model, tracker, plan, counted)
        else:
            _refresh(model, tracker, counted)
    _finish_and_check(model, tracker, counted)


def _tally(sample_size: int = 3) -> AuditTally:
    return AuditTally(CATEGORIES, (1.0, 2.5, 5.0), sample_size)


def _row(audit_id: int, action: str, *, at: datetime = T0, ms: int | None = None) -> AuditRow:
    return AuditRow(audit_id, "p1", action, at, ms)


def test_bucket_thresholds_make_upper_bounds_inclusive() -> None:
    assert bucket_thresholds_ms((1.0, 2.5, 0.0005)) == (1001, 2501, 1)


def test_boot_histogram_counts_a_duration_equal_to_a_bound_in_that_bucket() -> None:
    tally = _tally()
    for audit_id, ms in enumerate((1000, 1001, 2500, 9000), start=1):
        tally.add_row(_row(audit_id, "provision", ms=ms), T0)
    histogram = tally.product_audit("p1", T0).boot_histogram
    assert histogram.cumulative_counts == (1, 3, 3, 4)
    assert histogram.count == 4
    assert histogram.sum_s == 13.501


def test_provision_rows_without_duration_count_but_stay_out_of_the_histogram() -> None:
    tally = _tally()
    tally.add_row(_row(1, "provision"), T0)
    audit = tally.product_audit("p1", T0)
    assert audit.lifetime_by_action["provision"] == 1
    assert audit.boot_histogram.count == 0
    assert audit.avg_boot_ms is None


def test_average_boot_uses_the_most_recent_rows_by_id_even_when_they_arrive_late() -> None:
    tally = _tally(sample_size=3)
    for audit_id, ms in ((1, 1000), (2, 2000), (4, 4000), (5, 5000)):
        tally.add_row(_row(audit_id, "provision", ms=ms), T0)
    assert tally.product_audit("p1", T0).avg_boot_ms == 3667
    tally.add_row(_row(3, "provision", ms=9000), T0)
    assert tally.product_audit("p1", T0).avg_boot_ms == 6000


def test_rolling_hour_counts_rows_by_timestamp_and_forgets_old_ones() -> None:
    tally = _tally()
    tally.add_row(_row(1, "health_failed", at=T0 - timedelta(minutes=59)), T0)
    tally.add_row(_row(2, "health_failed", at=T0 - timedelta(minutes=61)), T0)
    tally.add_row(_row(3, "auto_restart_start", at=T0), T0)
    assert tally.product_audit("p1", T0).last_hour[EventCategory.CRASH] == 1
    assert tally.product_audit("p1", T0).last_hour[EventCategory.RESTART] == 1
    later = T0 + timedelta(minutes=2)
    tally.prune(later)
    audit = tally.product_audit("p1", later)
    assert audit.last_hour[EventCategory.CRASH] == 0
    assert audit.last_hour[EventCategory.RESTART] == 1
    assert audit.lifetime_by_action["health_failed"] == 2


def test_unknown_actions_are_counted_as_other_and_system_rows_are_skipped() -> None:
    tally = _tally()
    tally.add_row(_row(1, "reticulate"), T0)
    tally.add_row(AuditRow(2, None, "provision", T0, 100), T0)
    assert dict(tally.product_audit("p1", T0).lifetime_by_action) == {"other": 1}


NOW = T0 + timedelta(days=400)
SINCE = NOW - ROLLING_WINDOW
THRESHOLDS = bucket_thresholds_ms((1.0, 2.5, 5.0))


def _chunk_totals(rows: list[AuditRow], chunk: Chunk) -> list[AuditTotal]:
    """``audit_chunk_totals`` over ``rows`` (the visible ones), as PostgreSQL groups them."""
    groups: dict[tuple[str | None, str, int | None], list[AuditRow]] = {}
    for row in rows:
        if chunk.lo <= row.id <= chunk.hi:
            boot = row.action in CATEGORIES.provision and row.duration_ms is not None
            bucket = bisect.bisect_right(THRESHOLDS, row.duration_ms or 0) if boot else None
            groups.setdefault((row.product_id, row.action, bucket), []).append(row)
    return [
        AuditTotal(
            product_id,
            action,
            len(group),
            bucket,
            sum(r.duration_ms or 0 for r in group if r.action in CATEGORIES.provision),
            sum(1 for r in group if r.timestamp > SINCE),
        )
        for (product_id, action, bucket), group in groups.items()
    ]


def _chunk_found(
    rows: list[AuditRow], chunk: Chunk, tally: AuditTally, sample_size: int
) -> tuple[AuditChunk, ChunkFollowUps]:
    """One chunk as ``AuditCounter.read_chunk`` reads it: the totals, then only the statements
    ``chunk_follow_ups`` asks for, each played over the visible rows."""
    totals = _chunk_totals(rows, chunk)
    follow_ups = chunk_follow_ups(chunk, totals, tally, CATEGORIES.tracked_actions)
    in_chunk = sorted((r for r in rows if chunk.lo <= r.id <= chunk.hi), key=lambda r: r.id)
    missing, expected = [], chunk.lo
    for present in [*(r.id for r in in_chunk), chunk.hi + 1]:
        if present > expected:
            missing.append((expected, present - 1))
        expected = present + 1
    boots = []
    for product_id in follow_ups.boot_products:
        of_product = [
            r
            for r in in_chunk
            if r.product_id == product_id
            and r.action in CATEGORIES.provision
            and r.duration_ms is not None
        ]
        boots += [(product_id, r.id, r.duration_ms or 0) for r in of_product[-sample_size:]]
    last_hour = [
        (r.product_id, r.action, r.timestamp)
        for r in in_chunk
        if r.product_id is not None
        and r.timestamp > SINCE
        and r.action in CATEGORIES.tracked_actions
    ]
    found = AuditChunk(
        totals=totals,
        missing=missing if follow_ups.missing_ids else [],
        recent_boots=boots,
        last_hour=last_hour if follow_ups.last_hour else [],
    )
    if not follow_ups.missing_ids:
        assert missing == [], "the missing ids were left out of a chunk that has some"
    if not follow_ups.last_hour:
        assert last_hour == [], "the rolling hour was left out of a chunk that holds some of it"
    return found, follow_ups


def _random_row(rng: random.Random, audit_id: int) -> AuditRow:
    action = rng.choice(["provision", "provision", "destroy", "wake", "health_failed"])
    recent = rng.random() < 0.2
    return AuditRow(
        audit_id,
        rng.choice(["p1", "p2", "p3", None]),
        action,
        NOW - timedelta(minutes=rng.randint(1, 59)) if recent else T0 + timedelta(hours=audit_id),
        rng.randint(1, 6_000) if action == "provision" and rng.random() < 0.8 else None,
    )


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_a_history_counted_newest_first_with_statements_left_out_gives_the_full_tally(
    seed: int,
) -> None:
    """Chunks read their totals and only the statements those show can contribute, while
    rows committing late (inside counted chunks and below the history) and new rows above it
    are counted row by row in between: the tally equals one fed every committed row."""
    rng = random.Random(seed)
    sample_size = rng.randint(1, 3)
    high = rng.randint(1, 80)
    rows = {i: _random_row(rng, i) for i in range(1, high + 1) if rng.random() < 0.85}
    late = {i for i in rows if rng.random() < 0.15}
    visible = [r for i, r in rows.items() if i not in late]
    chunked, truth = _tally(sample_size), _tally(sample_size)
    plan = BackfillPlan.covering(1, high)
    next_id = high + 1
    while not plan.done:
        plan.span = rng.randint(1, 15)
        chunk = plan.next_chunk()
        assert chunk is not None
        found, _ = _chunk_found(visible, chunk, chunked, sample_size)
        count_chunk(chunked, found)
        plan.counted(chunk, 0.5, 2.0)
        for audit_id in sorted(late, key=lambda _: rng.random())[: rng.randint(0, 2)]:
            late.discard(audit_id)
            chunked.add_row(rows[audit_id], NOW)
        for _ in range(rng.randint(0, 2)):
            rows[next_id] = _random_row(rng, next_id)
            chunked.add_row(rows[next_id], NOW)
            next_id += 1
    for audit_id in late:
        chunked.add_row(rows[audit_id], NOW)
    for row in rows.values():
        truth.add_row(row, NOW)
    for product_id in ("p1", "p2", "p3"):
        assert chunked.product_audit(product_id, NOW) == truth.product_audit(product_id, NOW)
    state, expected = chunked.to_state(), truth.to_state()
    for part in ("lifetime", "histograms", "boot_samples"):
        assert state[part] == expected[part]


def test_a_dense_old_chunk_below_full_boot_samples_needs_only_its_totals() -> None:
    tally = _tally(sample_size=2)
    for audit_id in (50, 60):
        tally.add_row(AuditRow(audit_id, "p1", "provision", T0, 1_500), NOW)
    chunk = Chunk(1, 3)
    rows = [AuditRow(i, "p1", "provision", T0, 900) for i in (1, 2)] + [
        AuditRow(3, None, "wake", T0, None)
    ]
    _, follow_ups = _chunk_found(rows, chunk, tally, 2)
    assert follow_ups == ChunkFollowUps(missing_ids=False, boot_products=(), last_hour=False)


def test_a_chunk_reads_what_its_totals_show_it_can_contribute() -> None:
    tally = _tally(sample_size=2)
    tally.add_row(AuditRow(50, "p1", "provision", T0, 1_500), NOW)
    rows = [
        AuditRow(1, "p1", "provision", T0, 900),
        AuditRow(2, "p2", "provision", T0, 900),
        AuditRow(4, "p3", "destroy", NOW - timedelta(minutes=5), None),
    ]
    found, follow_ups = _chunk_found(rows, Chunk(1, 4), tally, 2)
    assert follow_ups == ChunkFollowUps(
        missing_ids=True, boot_products=("p1", "p2"), last_hour=True
    )
    assert found.missing == [(3, 3)]
    assert sorted(found.recent_boots) == [("p1", 1, 900), ("p2", 2, 900)]
    assert found.last_hour == [("p3", "destroy", NOW - timedelta(minutes=5))]


def test_a_full_boot_sample_still_takes_a_boot_newer_than_its_oldest() -> None:
    tally = _tally(sample_size=2)
    for audit_id in (10, 60):
        tally.add_row(AuditRow(audit_id, "p1", "provision", T0, 1_500), NOW)
    assert tally.takes_boot_sample("p1", 10)
    assert not tally.takes_boot_sample("p1", 9)
    assert tally.takes_boot_sample("p2", 1)
