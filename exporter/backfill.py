"""Planning the audit backfill: which id range to count next, and how many ids it spans.

The audit log that existed when the exporter started (ids ``low..high`` of the first
refresh's snapshot) is counted newest first, in id ranges ("chunks"), one bounded transaction
each, between the live refreshes: the rows of the rolling hour and the newest boots lie in the
first chunks, so the chunks after them need not look for those (``chunk_follow_ups`` in
``exporter.audit_counter``). Pure bookkeeping, no I/O: the counter reads a chunk, then reports
how long it took (the next span is sized from that speed) or that it failed (the same range is
tried again, smaller when it ran out of time). Nothing counted is ever planned again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

INITIAL_SPAN = 50_000
"""Ids in the first chunk: small enough to finish quickly on any server."""
MIN_SPAN = 1_000
MAX_SPAN = 50_000_000
GROWTH_LIMIT = 4.0
"""A chunk spans at most this many times the ids of the previous one, so one fast chunk
(ids that were mostly rolled back, say) cannot size a huge next one."""
TARGET_SHARE = 0.5
"""Chunks aim at this share of the statement limit: the limit is a bound, not a goal."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """An inclusive range of audit ids counted in one transaction."""

    lo: int
    hi: int

    @property
    def span(self) -> int:
        return self.hi - self.lo + 1


@dataclass(slots=True)
class BackfillPlan:
    """The ids ``low..high`` still to count: everything from ``next_hi`` down."""

    low: int
    high: int
    next_hi: int
    span: int = INITIAL_SPAN

    @classmethod
    def covering(cls, low: int, high: int) -> BackfillPlan:
        return cls(low=low, high=high, next_hi=high)

    def to_state(self) -> dict[str, int]:
        return {"low": self.low, "high": self.high, "next_hi": self.next_hi, "span": self.span}

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> BackfillPlan:
        """The plan ``to_state`` saved; ValueError/KeyError for anything else."""
        values = {key: state[key] for key in ("low", "high", "next_hi", "span")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise ValueError(f"backfill plan needs whole numbers, got {values!r}")
        plan = cls(**values)  # type: ignore[arg-type]
        if not 1 <= plan.low <= plan.next_hi + 1 <= plan.high + 1 or plan.span < 1:
            raise ValueError(f"inconsistent backfill plan {values!r}")
        return plan

    @property
    def done(self) -> bool:
        return self.next_hi < self.low

    @property
    def progress(self) -> float:
        """Share of the ids counted, 0..1 (1 once done)."""
        if self.done:
            return 1.0
        return (self.high - self.next_hi) / (self.high - self.low + 1)

    def next_chunk(self) -> Chunk | None:
        if self.done:
            return None
        return Chunk(max(self.low, self.next_hi - self.span + 1), self.next_hi)

    def counted(self, chunk: Chunk, elapsed_s: float, statement_limit_s: float) -> None:
        """``chunk`` was counted in ``elapsed_s``; size the next one from that speed."""
        if chunk.hi != self.next_hi:
            raise ValueError(f"chunk {chunk.lo}..{chunk.hi} is not the next one ({self.next_hi})")
        self.next_hi = chunk.lo - 1
        self.span = next_span(chunk.span, elapsed_s, statement_limit_s)

    def failed(self, chunk: Chunk, *, timed_out: bool) -> None:
        """``chunk`` was not counted; it is planned again, a quarter as wide when it timed out."""
        if timed_out:
            self.span = max(MIN_SPAN, chunk.span // 4)


def next_span(span: int, elapsed_s: float, statement_limit_s: float) -> int:
    """The span that should take ``TARGET_SHARE`` of the limit at the speed just measured."""
    target_s = statement_limit_s * TARGET_SHARE
    wanted = span * target_s / max(elapsed_s, 1e-3)
    return int(max(MIN_SPAN, min(MAX_SPAN, span * GROWTH_LIMIT, wanted)))
