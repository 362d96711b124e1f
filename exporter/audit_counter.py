"""The audit counting side of the refresher: live rows every refresh, history in chunks.

The first refresh reads only the audit log's id bounds: everything up to its highest id is
history, counted afterwards by the backfill in bounded id ranges (``exporter.backfill``), each
in its own short transaction between refreshes; every refresh reads the rows above that id
and the gaps, as ``exporter.audit`` describes. Until the history is counted the tally is
partial, and the refresher publishes it as such (never as a total).
``docs/design/incremental-audit.md`` explains why the two together count every row once.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter import queries
from exporter.audit import AuditRow, AuditTally, DbSnapshot, IdGap, IdGapTracker
from exporter.backfill import BackfillPlan, Chunk
from exporter.config import Settings
from exporter.db import Transaction
from exporter.domain import ROLLING_WINDOW, ActionCategories


@dataclass(frozen=True, slots=True)
class LiveRead:
    """What one refresh read from the audit log, applied only once the transaction succeeded."""

    snapshot: DbSnapshot
    rows: list[AuditRow]


@dataclass(frozen=True, slots=True)
class FirstRead:
    """The first refresh's view of the log: the ids the backfill will have to count."""

    snapshot: DbSnapshot
    low: int | None
    high: int | None


@dataclass(frozen=True, slots=True)
class ChunkRead:
    snapshot: DbSnapshot
    chunk: Chunk
    found: queries.AuditChunk


class AuditCounter:
    """Owns the audit state: the id tracker, the running tally and the backfill plan."""

    def __init__(self, settings: Settings, categories: ActionCategories) -> None:
        self._settings = settings
        self._categories = categories
        self._tracker: IdGapTracker | None = None
        self._backfill: BackfillPlan | None = None
        self._tally = self.new_tally()

    def new_tally(self) -> AuditTally:
        return AuditTally(
            self._categories,
            self._settings.metrics.boot_buckets_s,
            self._settings.metrics.boot_sample_size,
        )

    @property
    def started(self) -> bool:
        return self._tracker is not None

    @property
    def counted(self) -> bool:
        """The whole log is counted: the tally holds totals, not partial counts."""
        return self._tracker is not None and (self._backfill is None or self._backfill.done)

    @property
    def backfilling(self) -> bool:
        return self._backfill is not None and not self._backfill.done

    @property
    def progress(self) -> float:
        """Share of the history counted, 0..1; 0 before the first refresh."""
        if self._tracker is None:
            return 0.0
        return 1.0 if self._backfill is None else self._backfill.progress

    @property
    def tally(self) -> AuditTally:
        return self._tally

    @property
    def tracker(self) -> IdGapTracker | None:
        return self._tracker

    @property
    def backfill(self) -> BackfillPlan | None:
        return self._backfill

    async def read(self, tx: Transaction, snapshot: DbSnapshot) -> LiveRead | FirstRead:
        if self._tracker is None:
            low, high = await queries.fetch_audit_id_bounds(tx)
            return FirstRead(snapshot, low, high)
        plan = self._tracker.read_plan()
        rows = await queries.fetch_audit_rows_in_gaps(tx, plan.gap_los, plan.gap_his)
        rows += await queries.fetch_audit_rows_after(tx, plan.after_id)
        return LiveRead(snapshot, rows)

    def apply(self, read: LiveRead | FirstRead) -> None:
        now = read.snapshot.started_at
        if isinstance(read, FirstRead):
            high = read.high or 0
            below_first = []
            if read.low is not None and read.low > 1:
                below_first.append(IdGap(1, read.low - 1, read.snapshot.observed_at))
            self._tracker = IdGapTracker(high, below_first)
            if read.low is not None and read.high is not None:
                self._backfill = BackfillPlan.covering(read.low, read.high)
        else:
            assert self._tracker is not None
            for row in read.rows:
                self._tally.add_row(row, now)
            self._tracker.advance((row.id for row in read.rows), read.snapshot)
        self._tally.prune(now)

    def next_chunk(self) -> Chunk | None:
        return None if self._backfill is None else self._backfill.next_chunk()

    async def read_chunk(self, tx: Transaction, snapshot: DbSnapshot, chunk: Chunk) -> ChunkRead:
        await tx.allow_statement_time(self._settings.refresh.backfill_statement_s)
        found = await queries.fetch_audit_chunk(
            tx,
            chunk.lo,
            chunk.hi,
            boot_actions=self._categories.provision,
            thresholds_ms=self._tally.thresholds_ms,
            sample_size=self._settings.metrics.boot_sample_size,
            since=snapshot.started_at - ROLLING_WINDOW,
            tracked_actions=sorted(self._categories.tracked_actions),
        )
        return ChunkRead(snapshot, chunk, found)

    def apply_chunk(self, read: ChunkRead, elapsed_s: float) -> None:
        """Count one chunk; its missing ids become gaps, fenced like every other gap."""
        assert self._tracker is not None
        assert self._backfill is not None
        tally = self._tally
        for total in read.found.totals:
            tally.add_count(total.product_id, total.action, total.rows)
            if total.boot_bucket is not None:
                tally.add_boot_bucket(
                    total.product_id, total.boot_bucket, total.rows, total.boot_sum_ms
                )
        for product_id, audit_id, duration_ms in read.found.recent_boots:
            tally.add_boot_sample(product_id, audit_id, duration_ms)
        for product_id, action, timestamp in read.found.last_hour:
            tally.add_recent(product_id, action, timestamp)
        self._tracker.add_missing(read.found.missing, read.snapshot.observed_at)
        self._backfill.counted(read.chunk, elapsed_s, self._settings.refresh.backfill_statement_s)

    def chunk_failed(self, chunk: Chunk, *, timed_out: bool) -> None:
        assert self._backfill is not None
        self._backfill.failed(chunk, timed_out=timed_out)
