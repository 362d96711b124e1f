"""Exact, incremental counting of the audit log: the pure bookkeeping.

Two pieces, both free of I/O so they can be tested exhaustively:

* ``IdGapTracker`` decides which audit ids a refresh must read: every id above the
  highest one counted, plus the *gaps* below it — ids that were not visible yet and may
  still commit. A gap is forgotten only once it is provably permanent (see
  ``docs/design/incremental-audit.md`` for the argument), so nothing is missed, nothing is
  counted twice, and the set of gaps does not grow without bound.
* ``AuditTally`` accumulates what was read: lifetime counts per product and action, the
  boot-duration histogram, the most recent boot durations, and the rows of the last hour
  for the rolling-window figures. It hands out each product's figures as one frozen
  ``ProductAudit`` and hands out the very same object again for as long as nothing of that
  product changed, so a refresh tells an unchanged product by identity, without copying
  its figures.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from exporter.domain import (
    ROLLING_WINDOW,
    ActionCategories,
    BootHistogram,
    EventCategory,
    average_ms,
)
from exporter.loopguard import Pace, no_pace

ID_ALLOCATION_GRACE = timedelta(seconds=60)
"""Upper bound on the time between an INSERT taking an audit id from the sequence and its
transaction holding a transaction id. Both happen inside one INSERT statement (the id is the
column default; the transaction id is assigned when the row is written), so the real figure is
microseconds; one minute leaves a wide margin."""


@dataclass(frozen=True, slots=True)
class DbSnapshot:
    """What the refresh transaction's snapshot tells about concurrent writers."""

    started_at: datetime
    """``now()``: no later than the moment the snapshot was taken."""
    observed_at: datetime | None
    """The gap clock, read after the snapshot was taken and before ``next_xid``: on a primary
    ``clock_timestamp()``; on a hot standby the commit time of the last transaction replayed
    (``None`` before replay has replayed any), which does not move while replay is paused."""
    xmin: int
    """The snapshot's ``xmin``: no transaction below it is still running (64-bit ids)."""
    next_xid: int | None
    """The next transaction id to be assigned, read after the snapshot was taken: every
    transaction that held an id by then has a smaller one. Not the snapshot's ``xmax``, which
    is one past the latest *completed* transaction and may equal the id of one still running.
    ``None`` when it could not be read (the rare 32-bit wrap of the id counter)."""
    in_recovery: bool = False
    replication_lag_s: float = 0.0
    """How far a standby's replay is behind what it received, in seconds (0 on a primary)."""


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    product_id: str | None
    action: str
    timestamp: datetime
    duration_ms: int | None


@dataclass(slots=True)
class IdGap:
    """An inclusive range of ids below the high-water mark that has not been seen yet."""

    lo: int
    hi: int
    first_missing_at: datetime | None
    """On the gap clock; ``None`` until a snapshot had a gap clock (a standby that has not
    replayed anything yet): no fence before it is known."""
    fence_xid: int | None = None
    """Set once the grace period has passed: every transaction that could hold one of these
    ids has a transaction id below this value. When the oldest running transaction is at or
    past it, the ids that are still missing never committed and never will."""


@dataclass(frozen=True, slots=True)
class ReadPlan:
    after_id: int
    gap_los: tuple[int, ...]
    gap_his: tuple[int, ...]


class IdGapTracker:
    """Which audit ids have been counted, and which may still appear."""

    def __init__(self, high_water: int, gaps: Iterable[IdGap] = ()) -> None:
        self.high_water = high_water
        self.gaps: list[IdGap] = sorted(gaps, key=lambda g: g.lo)

    def add_missing(self, missing: Iterable[tuple[int, int]], at: datetime | None) -> None:
        """Ids at or below the high-water mark found missing by a backfill chunk read at
        ``at`` (its ``observed_at``): they become gaps like any other. Their ranges never
        overlap a gap already kept, because no chunk covers ids the tracker already owns."""
        self.gaps.extend(IdGap(lo, hi, at) for lo, hi in missing if lo <= hi)
        self.gaps.sort(key=lambda g: g.lo)

    def to_state(self) -> dict[str, object]:
        """Plain JSON values for a checkpoint; ``from_state`` reads them back."""
        return {
            "high_water": self.high_water,
            "gaps": [
                [g.lo, g.hi, g.first_missing_at and g.first_missing_at.isoformat(), g.fence_xid]
                for g in self.gaps
            ],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> IdGapTracker:
        """The tracker ``to_state`` saved; ValueError/TypeError/KeyError for anything else."""
        high_water = _whole(state["high_water"])
        gaps = []
        for lo, hi, first_missing_at, fence_xid in _items(state["gaps"]):
            gap = IdGap(
                _whole(lo),
                _whole(hi),
                None if first_missing_at is None else _moment(first_missing_at),
                None if fence_xid is None else _whole(fence_xid),
            )
            if not 1 <= gap.lo <= gap.hi <= high_water:
                raise ValueError(f"gap {gap.lo}..{gap.hi} outside 1..{high_water}")
            gaps.append(gap)
        return cls(high_water, gaps)

    def read_plan(self) -> ReadPlan:
        return ReadPlan(
            after_id=self.high_water,
            gap_los=tuple(g.lo for g in self.gaps),
            gap_his=tuple(g.hi for g in self.gaps),
        )

    @property
    def pending_ids(self) -> int:
        return sum(g.hi - g.lo + 1 for g in self.gaps)

    def advance(self, seen_ids: Iterable[int], snapshot: DbSnapshot) -> None:
        """Record the ids one refresh read (gap hits and new ids) under ``snapshot``.

        Must be called with every id the read plan's queries returned in that snapshot.
        """
        ids = sorted(set(seen_ids))
        split = bisect.bisect_right(ids, self.high_water)
        self._fill_gaps(ids[:split])
        self._extend(ids[split:], snapshot.observed_at)
        self._retire_permanent_gaps(snapshot)

    def _fill_gaps(self, hits: Sequence[int]) -> None:
        if not hits:
            return
        remaining: list[IdGap] = []
        for gap in self.gaps:
            start = bisect.bisect_left(hits, gap.lo)
            end = bisect.bisect_right(hits, gap.hi)
            lo = gap.lo
            for hit in hits[start:end]:
                if hit > lo:
                    remaining.append(IdGap(lo, hit - 1, gap.first_missing_at, gap.fence_xid))
                lo = hit + 1
            if lo <= gap.hi:
                remaining.append(IdGap(lo, gap.hi, gap.first_missing_at, gap.fence_xid))
        self.gaps = remaining

    def _extend(self, new_ids: Sequence[int], observed_at: datetime | None) -> None:
        previous = self.high_water
        for new_id in new_ids:
            if new_id > previous + 1:
                self.gaps.append(IdGap(previous + 1, new_id - 1, observed_at))
            previous = new_id
        self.high_water = previous

    def _retire_permanent_gaps(self, snapshot: DbSnapshot) -> None:
        kept: list[IdGap] = []
        clock = snapshot.observed_at
        for gap in self.gaps:
            if gap.first_missing_at is None:
                gap.first_missing_at = clock
            elif (
                gap.fence_xid is None
                and snapshot.next_xid is not None
                and clock is not None
                and clock >= gap.first_missing_at + ID_ALLOCATION_GRACE
            ):
                gap.fence_xid = snapshot.next_xid
            if gap.fence_xid is not None and snapshot.xmin >= gap.fence_xid:
                continue
            kept.append(gap)
        self.gaps = kept


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _items(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value


def _mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_WINDOW_US = ROLLING_WINDOW // _MICROSECOND


def _micros(moment: datetime) -> int:
    """An aware time as whole microseconds since the epoch: exact (datetimes hold
    microseconds), and eight bytes in an ``array`` where a ``datetime`` takes about sixty."""
    return (moment - _EPOCH) // _MICROSECOND


def _from_micros(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


_NO_TIMES: array[int] = array("q")


def _moment(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected a time, got {value!r}")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"time without zone: {value!r}")
    return moment


def bucket_thresholds_ms(upper_bounds_s: Sequence[float]) -> tuple[int, ...]:
    """Integer thresholds such that a whole-millisecond duration ``d`` falls in the bucket
    ``le=b`` exactly when ``d <= b * 1000``: the bucket index is the number of thresholds
    ``<= d``. The same thresholds drive PostgreSQL's ``width_bucket`` in the backfill,
    so SQL and Python put every duration in the same bucket."""
    return tuple(
        int((Decimal(str(b)) * 1000).to_integral_value("ROUND_FLOOR")) + 1 for b in upper_bounds_s
    )


@dataclass(slots=True)
class _Histogram:
    bucket_counts: list[int]
    """Per bucket, the last one above every bound: together they count every boot."""
    sum_ms: int = 0


@dataclass(frozen=True, slots=True)
class ProductAudit:
    """A frozen copy of one product's audit figures, for a snapshot."""

    lifetime_by_action: Mapping[str, int]
    last_hour: Mapping[EventCategory, int]
    avg_boot_ms: int | None
    boot_histogram: BootHistogram


@dataclass(frozen=True, slots=True)
class _Issued:
    """A ``ProductAudit`` handed out, and the span of ``now`` over which it stays true."""

    audit: ProductAudit
    since: datetime
    until: datetime
    """The first moment a last-hour count moves: a row leaves the window or a row stamped
    later than ``since`` enters it."""


class AuditTally:
    """Running audit figures per product, fed by the start-up pass and then row by row."""

    def __init__(
        self,
        categories: ActionCategories,
        boot_buckets_s: tuple[float, ...],
        boot_sample_size: int,
    ) -> None:
        self._categories = categories
        self._tracked = categories.tracked_actions
        self._buckets_s = boot_buckets_s
        self._thresholds = bucket_thresholds_ms(boot_buckets_s)
        self._sample_size = boot_sample_size
        self._lifetime: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._histograms: dict[str, _Histogram] = {}
        self._boot_samples: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        self._recent: defaultdict[tuple[str, EventCategory], array[int]] = defaultdict(
            lambda: array("q")
        )
        """The times (``_micros``) of each product's rows in the rolling hour, per category,
        in order: one entry per row, so at thousands of rows a second a compact array."""
        self._issued: dict[str, _Issued] = {}

    @property
    def thresholds_ms(self) -> tuple[int, ...]:
        return self._thresholds

    def _action_key(self, action: str) -> str:
        return action if action in self._tracked else "other"

    def _histogram(self, product_id: str) -> _Histogram:
        histogram = self._histograms.get(product_id)
        if histogram is None:
            histogram = _Histogram([0] * (len(self._thresholds) + 1))
            self._histograms[product_id] = histogram
        return histogram

    def add_count(self, product_id: str, action: str, rows: int) -> None:
        self._issued.pop(product_id, None)
        self._lifetime[product_id][self._action_key(action)] += rows

    def add_boot_bucket(self, product_id: str, bucket: int, rows: int, sum_ms: int) -> None:
        self._issued.pop(product_id, None)
        histogram = self._histogram(product_id)
        histogram.bucket_counts[bucket] += rows
        histogram.sum_ms += sum_ms

    def takes_boot_sample(self, product_id: str, audit_id: int) -> bool:
        """Whether a boot with id ``audit_id`` or lower could still enter the product's
        sample: not when it already holds ``boot_sample_size`` boots, all with higher ids
        (the sample keeps the highest ids it was given)."""
        sample = self._boot_samples.get(product_id)
        return sample is None or len(sample) < self._sample_size or sample[0][0] <= audit_id

    def add_boot_sample(self, product_id: str, audit_id: int, duration_ms: int) -> None:
        self._issued.pop(product_id, None)
        sample = self._boot_samples[product_id]
        bisect.insort(sample, (audit_id, duration_ms))
        if len(sample) > self._sample_size:
            del sample[: len(sample) - self._sample_size]

    def add_recent(self, product_id: str, action: str, timestamp: datetime) -> None:
        self._issued.pop(product_id, None)
        for category in self._categories.categories_of(action):
            bisect.insort(self._recent[(product_id, category)], _micros(timestamp))

    def add_row(self, row: AuditRow, now: datetime) -> None:
        """Count one row read incrementally (each row exactly once)."""
        if row.product_id is None:
            return
        self.add_count(row.product_id, row.action, 1)
        if row.action in self._categories.provision and row.duration_ms is not None:
            bucket = bisect.bisect_right(self._thresholds, row.duration_ms)
            self.add_boot_bucket(row.product_id, bucket, 1, row.duration_ms)
            self.add_boot_sample(row.product_id, row.id, row.duration_ms)
        if row.timestamp > now - ROLLING_WINDOW:
            self.add_recent(row.product_id, row.action, row.timestamp)

    def prune(self, now: datetime, pace: Pace = no_pace) -> None:
        """Forget rows that have left the rolling window for good (windows only move forward)."""
        cutoff = _micros(now) - _WINDOW_US
        for key in list(self._recent):
            pace()
            timestamps = self._recent[key]
            del timestamps[: bisect.bisect_right(timestamps, cutoff)]
            if not timestamps:
                del self._recent[key]

    def to_state(self) -> dict[str, object]:
        """Plain JSON values for a checkpoint; ``restore`` reads them back."""
        return {
            "lifetime": {p: dict(counts) for p, counts in self._lifetime.items()},
            "histograms": {
                p: [h.bucket_counts, h.sum_ms, sum(h.bucket_counts)]
                for p, h in self._histograms.items()
            },
            "boot_samples": {
                p: [list(s) for s in sample] for p, sample in self._boot_samples.items()
            },
            "recent": [
                [p, category.value, [_from_micros(t).isoformat() for t in timestamps]]
                for (p, category), timestamps in self._recent.items()
            ],
        }

    def restore(self, state: Mapping[str, object]) -> None:
        """Load what ``to_state`` saved (into a fresh tally with the same settings);
        ValueError/TypeError/KeyError for anything else."""
        self._issued.clear()
        buckets = len(self._thresholds) + 1
        for product, counts in _mapping(state["lifetime"]).items():
            for action, rows in _mapping(counts).items():
                self._lifetime[product][str(action)] = _whole(rows)
        for product, (counts, sum_ms, count) in _mapping(state["histograms"]).items():
            bucket_counts = [_whole(c) for c in _items(counts)]
            if len(bucket_counts) != buckets:
                raise ValueError(f"{len(bucket_counts)} boot buckets, expected {buckets}")
            if _whole(count) != sum(bucket_counts):
                raise ValueError(f"{count} boots, but the buckets hold {sum(bucket_counts)}")
            self._histograms[product] = _Histogram(bucket_counts, _whole(sum_ms))
        for product, sample in _mapping(state["boot_samples"]).items():
            pairs = sorted((_whole(i), _whole(d)) for i, d in _items(sample))
            self._boot_samples[product] = pairs[-self._sample_size :]
        for product, category, timestamps in _items(state["recent"]):
            moments = sorted(_micros(_moment(t)) for t in _items(timestamps))
            self._recent[(str(product), EventCategory(category))] = array("q", moments)

    def product_audit(self, product_id: str, now: datetime) -> ProductAudit:
        """The product's figures as of ``now``: the object handed out last time when no row
        of the product was counted since and its last-hour counts are still the same."""
        issued = self._issued.get(product_id)
        if issued is not None and issued.since <= now < issued.until:
            return issued.audit
        last_hour = {}
        now_us = _micros(now)
        edges_us = []  # when a row next enters or leaves the window, per category
        for category in EventCategory:
            timestamps = self._recent.get((product_id, category), _NO_TIMES)
            newer = bisect.bisect_right(timestamps, now_us)
            leaving = bisect.bisect_right(timestamps, now_us - _WINDOW_US)
            last_hour[category] = newer - leaving
            if newer < len(timestamps):
                edges_us.append(timestamps[newer])
            if leaving < len(timestamps):
                edges_us.append(timestamps[leaving] + _WINDOW_US)
        until = _from_micros(min(edges_us)) if edges_us else datetime.max.replace(tzinfo=now.tzinfo)
        sample = self._boot_samples.get(product_id, [])
        audit = ProductAudit(
            lifetime_by_action=MappingProxyType(dict(self._lifetime.get(product_id, {}))),
            last_hour=MappingProxyType(last_hour),
            avg_boot_ms=average_ms(duration for _, duration in sample),
            boot_histogram=self._frozen_histogram(product_id),
        )
        self._issued[product_id] = _Issued(audit, now, until)
        return audit

    def _frozen_histogram(self, product_id: str) -> BootHistogram:
        histogram = self._histograms.get(product_id)
        if histogram is None:
            return BootHistogram.empty(self._buckets_s)
        cumulative: list[int] = []
        running = 0
        for count in histogram.bucket_counts:
            running += count
            cumulative.append(running)
        return BootHistogram(
            upper_bounds_s=self._buckets_s,
            cumulative_counts=tuple(cumulative),
            sum_s=histogram.sum_ms / 1000.0,
            count=running,
        )
