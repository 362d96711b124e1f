"""Backfill planning: chunks cover the history once, newest first, sized by measured speed."""

from __future__ import annotations

import pytest

from exporter.backfill import MAX_SPAN, MIN_SPAN, BackfillPlan, Chunk, next_span


def test_chunks_cover_every_id_once_newest_first_and_then_the_plan_is_done() -> None:
    plan = BackfillPlan(low=5, high=30, next_hi=30, span=10)
    seen: list[int] = []
    while (chunk := plan.next_chunk()) is not None:
        seen.extend(range(chunk.hi, chunk.lo - 1, -1))
        plan.counted(chunk, elapsed_s=1.0, statement_limit_s=2.0)
    assert seen == list(range(30, 4, -1))
    assert plan.done
    assert plan.progress == 1.0


def test_progress_is_the_share_of_ids_counted() -> None:
    plan = BackfillPlan(low=1, high=100, next_hi=100, span=25)
    assert plan.progress == 0.0
    chunk = plan.next_chunk()
    assert chunk == Chunk(76, 100)
    plan.counted(chunk, elapsed_s=1.0, statement_limit_s=2.0)
    assert plan.progress == 0.25


def test_a_failed_chunk_is_planned_again_and_narrower_when_it_timed_out() -> None:
    plan = BackfillPlan(low=1, high=10**9, next_hi=10**9, span=400_000)
    chunk = plan.next_chunk()
    assert chunk is not None
    plan.failed(chunk, timed_out=False)
    assert plan.next_chunk() == chunk
    plan.failed(chunk, timed_out=True)
    assert plan.next_chunk() == Chunk(10**9 - 99_999, 10**9)
    assert plan.progress == 0.0


def test_only_the_next_chunk_can_be_counted() -> None:
    plan = BackfillPlan(low=1, high=100, next_hi=100, span=10)
    with pytest.raises(ValueError, match="not the next one"):
        plan.counted(Chunk(81, 90), elapsed_s=1.0, statement_limit_s=2.0)
    assert plan.next_hi == 100


def test_the_next_span_aims_at_half_the_statement_limit_at_the_measured_speed() -> None:
    assert next_span(100_000, elapsed_s=0.5, statement_limit_s=2.0) == 200_000
    assert next_span(100_000, elapsed_s=4.0, statement_limit_s=2.0) == 25_000


def test_the_next_span_grows_at_most_fourfold_and_stays_within_bounds() -> None:
    assert next_span(100_000, elapsed_s=0.0, statement_limit_s=2.0) == 400_000
    assert next_span(MAX_SPAN, elapsed_s=0.001, statement_limit_s=60.0) == MAX_SPAN
    assert next_span(MIN_SPAN, elapsed_s=100.0, statement_limit_s=0.1) == MIN_SPAN
