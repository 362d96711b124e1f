"""The audit counting side of the refresher: live rows every refresh, history in chunks.

The first refresh reads only the audit log's id bounds: everything up to its highest id is
history, counted afterwards by the backfill in bounded id ranges (``exporter.backfill``), each
in its own short transaction between refreshes; every refresh reads the rows above that id
and the gaps, as ``exporter.audit`` describes. Until the history is counted the tally is
partial, and the refresher publishes it as such (never as a total).
``docs/design/incremental-audit.md`` explains why the two together count every row once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from exporter import queries
from exporter.audit import AuditRow, AuditTally, DbSnapshot, IdGap, IdGapTracker
from exporter.backfill import BackfillPlan, Chunk
from exporter.checkpoint import (
    Checkpoint,
    CheckpointDamaged,
    DataIdentity,
    counting_settings,
    decode,
    encode,
    read_file,
    rejection,
    write_atomically,
)
from exporter.config import Settings
from exporter.db import Transaction
from exporter.domain import ROLLING_WINDOW, ActionCategories
from exporter.logs import log_event
from exporter.loopguard import Pace, no_pace

logger = logging.getLogger("exporter.audit")


@dataclass(frozen=True, slots=True)
class Resumed:
    """A checkpoint's state, validated against the database; installed with the refresh."""

    tracker: IdGapTracker
    tally: AuditTally
    backfill: BackfillPlan | None


@dataclass(frozen=True, slots=True)
class LiveRead:
    """What one refresh read from the audit log, applied only once the transaction succeeded."""

    snapshot: DbSnapshot
    rows: list[AuditRow]
    resumed: Resumed | None = None
    identity: DataIdentity | None = None
    """Read when a checkpoint is due: the data the state will belong to once applied."""


@dataclass(frozen=True, slots=True)
class FirstRead:
    """The first refresh's view of the log: the ids the backfill will have to count."""

    snapshot: DbSnapshot
    low: int | None
    high: int | None
    identity: DataIdentity | None = None


@dataclass(frozen=True, slots=True)
class ChunkRead:
    snapshot: DbSnapshot
    chunk: Chunk
    found: queries.AuditChunk


@dataclass(frozen=True, slots=True)
class ChunkFollowUps:
    """Which of a chunk's statements after the totals can find anything."""

    missing_ids: bool
    boot_products: tuple[str, ...]
    last_hour: bool


def chunk_follow_ups(
    chunk: Chunk,
    totals: Sequence[queries.AuditTotal],
    tally: AuditTally,
    tracked_actions: Collection[str],
) -> ChunkFollowUps:
    """What the totals of ``chunk`` leave to read: the missing ids only when fewer rows are
    visible than the range has ids; the boots only of products that have some in the chunk and
    whose sample can still take an id this low; the rolling hour's rows only when some are
    there. Each statement left out would have found nothing that changes the tally."""
    products = [t for t in totals if t.product_id is not None]
    return ChunkFollowUps(
        missing_ids=sum(t.rows for t in totals) < chunk.span,
        boot_products=tuple(
            sorted(
                {
                    t.product_id
                    for t in products
                    if t.product_id is not None
                    and t.boot_bucket is not None
                    and tally.takes_boot_sample(t.product_id, chunk.hi)
                }
            )
        ),
        last_hour=any(t.rows_in_window and t.action in tracked_actions for t in products),
    )


def count_chunk(tally: AuditTally, found: queries.AuditChunk) -> None:
    """Add what one chunk found to ``tally`` (its missing ids are the tracker's)."""
    for total in found.totals:
        if total.product_id is None:
            continue
        tally.add_count(total.product_id, total.action, total.rows)
        if total.boot_bucket is not None:
            tally.add_boot_bucket(
                total.product_id, total.boot_bucket, total.rows, total.boot_sum_ms
            )
    for product_id, audit_id, duration_ms in found.recent_boots:
        tally.add_boot_sample(product_id, audit_id, duration_ms)
    for product_id, action, timestamp in found.last_hour:
        tally.add_recent(product_id, action, timestamp)


class AuditCounter:
    """Owns the audit state: the id tracker, the running tally and the backfill plan."""

    def __init__(self, settings: Settings, categories: ActionCategories) -> None:
        self._settings = settings
        self._categories = categories
        self._tracker: IdGapTracker | None = None
        self._backfill: BackfillPlan | None = None
        self._tally = self.new_tally()
        self._checkpoint_path = settings.state.checkpoint_path
        self._checkpoint_rejected = False
        self._checkpoint_written_at: float | None = None
        self._checkpoint_due: DataIdentity | None = None

    def new_tally(self) -> AuditTally:
        return AuditTally(
            self._categories,
            self._settings.metrics.boot_buckets_s,
            self._settings.metrics.boot_sample_size,
        )

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
        resumed = None
        tracker = self._tracker
        if tracker is None:
            resumed = await self._resume(tx)
            if resumed is None:
                low, high = await queries.fetch_audit_id_bounds(tx)
                return FirstRead(snapshot, low, high, await self._identity_if_due(tx, high or 0))
            tracker = resumed.tracker
        plan = tracker.read_plan()
        rows = await queries.fetch_audit_rows_in_gaps(tx, plan.gap_los, plan.gap_his)
        rows += await queries.fetch_audit_rows_after(tx, plan.after_id)
        high_water = max([tracker.high_water, *(row.id for row in rows)])
        return LiveRead(snapshot, rows, resumed, await self._identity_if_due(tx, high_water))

    def apply(self, read: LiveRead | FirstRead, pace: Pace = no_pace) -> None:
        """Apply a successful refresh's read; a checkpoint due with it is written by
        ``write_checkpoint``, once the refresh is published."""
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
            if read.resumed is not None:
                self._tracker = read.resumed.tracker
                self._tally = read.resumed.tally
                self._backfill = read.resumed.backfill
            assert self._tracker is not None
            for row in read.rows:
                pace()
                self._tally.add_row(row, now)
            self._tracker.advance((row.id for row in read.rows), read.snapshot)
        self._tally.prune(now, pace)
        self._checkpoint_due = read.identity

    def request_checkpoint(self) -> None:
        """Write the checkpoint at the next successful refresh, whatever the interval."""
        self._checkpoint_written_at = None

    async def _identity_if_due(self, tx: Transaction, high_water: int) -> DataIdentity | None:
        if self._checkpoint_path is None:
            return None
        written_at = self._checkpoint_written_at
        interval_s = self._settings.state.checkpoint_interval_s
        if written_at is not None and time.monotonic() - written_at < interval_s:
            return None
        return await queries.fetch_data_identity(tx, high_water)

    def write_checkpoint(self) -> None:
        """Write the state the last ``apply`` left, if a checkpoint was due with it. Called
        after the refresh is published (a file write and fsync can wait on a busy disk, and the
        fleet state should not) and before anything else changes the state (the refresher
        holds its lock from the refresh until here)."""
        identity, self._checkpoint_due = self._checkpoint_due, None
        if identity is None:
            return
        assert self._checkpoint_path is not None
        assert self._tracker is not None
        assert identity.high_water == self._tracker.high_water
        checkpoint = Checkpoint(
            identity=identity,
            counting=counting_settings(self._settings),
            tracker=self._tracker.to_state(),
            tally=self._tally.to_state(),
            backfill=None if self._backfill is None else self._backfill.to_state(),
        )
        self._checkpoint_written_at = time.monotonic()
        try:
            write_atomically(self._checkpoint_path, encode(checkpoint))
        except OSError as error:
            log_event(
                logger,
                logging.WARNING,
                "checkpoint_write_failed",
                path=str(self._checkpoint_path),
                error=error.strerror or str(error),
            )

    async def _resume(self, tx: Transaction) -> Resumed | None:
        """The checkpoint's state when it provably belongs to this data; else ``None``, after
        one ``checkpoint_rejected`` line (once, however often the first refresh is retried)."""
        path = self._checkpoint_path
        if path is None or self._checkpoint_rejected:
            return None
        try:
            data = await asyncio.to_thread(read_file, path)
            if data is None:
                return None
            saved = decode(data)
        except (OSError, CheckpointDamaged) as error:
            self._reject("unreadable" if isinstance(error, OSError) else "damaged", str(error))
            return None
        current = await queries.fetch_data_identity(tx, saved.identity.high_water)
        mismatch = rejection(saved, current, counting_settings(self._settings))
        if mismatch is not None:
            self._reject(mismatch, f"saved for high-water id {saved.identity.high_water}")
            return None
        try:
            tally = self.new_tally()
            tally.restore(saved.tally)
            resumed = Resumed(
                tracker=IdGapTracker.from_state(saved.tracker),
                tally=tally,
                backfill=None
                if saved.backfill is None
                else BackfillPlan.from_state(saved.backfill),
            )
        except (ValueError, TypeError, KeyError) as error:
            self._reject("damaged", f"{type(error).__name__}: {error}")
            return None
        if resumed.tracker.high_water != saved.identity.high_water:
            self._reject("damaged", "tracker and identity disagree on the high-water id")
            return None
        log_event(
            logger,
            logging.INFO,
            "checkpoint_resumed",
            path=str(path),
            high_water=saved.identity.high_water,
            audit="counted" if resumed.backfill is None or resumed.backfill.done else "backfilling",
        )
        return resumed

    def _reject(self, reason: str, detail: str) -> None:
        self._checkpoint_rejected = True
        log_event(
            logger,
            logging.WARNING,
            "checkpoint_rejected",
            reason=reason,
            path=str(self._checkpoint_path),
            detail=detail,
        )

    def next_chunk(self) -> Chunk | None:
        return None if self._backfill is None else self._backfill.next_chunk()

    async def read_chunk(self, tx: Transaction, snapshot: DbSnapshot, chunk: Chunk) -> ChunkRead:
        """The chunk's totals, then only the statements they show can contribute (all in
        the chunk's one snapshot). Reads the tally, which changes only under the refresher's
        lock, held from this read until ``apply_chunk``."""
        await queries.allow_statement_time(tx, self._settings.refresh.backfill_statement_s)
        boot_actions = self._categories.provision
        since = snapshot.started_at - ROLLING_WINDOW
        tracked = self._categories.tracked_actions
        totals = await queries.fetch_audit_chunk_totals(
            tx,
            chunk.lo,
            chunk.hi,
            boot_actions=boot_actions,
            thresholds_ms=self._tally.thresholds_ms,
            since=since,
        )
        follow_ups = chunk_follow_ups(chunk, totals, self._tally, tracked)
        found = queries.AuditChunk(
            totals=totals,
            missing=await queries.fetch_audit_chunk_missing_ids(tx, chunk.lo, chunk.hi)
            if follow_ups.missing_ids
            else [],
            recent_boots=await queries.fetch_audit_chunk_recent_boots(
                tx,
                chunk.lo,
                chunk.hi,
                boot_actions=boot_actions,
                sample_size=self._settings.metrics.boot_sample_size,
                product_ids=follow_ups.boot_products,
            )
            if follow_ups.boot_products
            else [],
            last_hour=await queries.fetch_audit_chunk_last_hour(
                tx, chunk.lo, chunk.hi, since=since, tracked_actions=sorted(tracked)
            )
            if follow_ups.last_hour
            else [],
        )
        return ChunkRead(snapshot, chunk, found)

    def apply_chunk(self, read: ChunkRead, elapsed_s: float) -> None:
        """Count one chunk; its missing ids become gaps, fenced like every other gap."""
        assert self._tracker is not None
        assert self._backfill is not None
        count_chunk(self._tally, read.found)
        self._tracker.add_missing(read.found.missing, read.snapshot.observed_at)
        self._backfill.counted(read.chunk, elapsed_s, self._settings.refresh.backfill_statement_s)
        if self._backfill.done:
            self.request_checkpoint()

    def chunk_failed(self, chunk: Chunk, *, timed_out: bool) -> None:
        assert self._backfill is not None
        self._backfill.failed(chunk, timed_out=timed_out)
