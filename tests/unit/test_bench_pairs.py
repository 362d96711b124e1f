"""The benchmark's side-by-side ratios: medians of interleaved pairs, never a best run."""

from __future__ import annotations

import pytest

from bench.pairs import PAIRS, paired_ratio, run_interleaved, run_rounds


def test_the_ratio_is_the_median_of_the_pair_ratios_with_their_spread() -> None:
    ours = [90.0, 50.0, 100.0, 95.0, 120.0, 80.0, 99.0]
    reference = [100.0] * 7
    comparison = paired_ratio(ours, reference, float)
    assert comparison.median == pytest.approx(0.95)
    assert (comparison.low, comparison.high) == (pytest.approx(0.5), pytest.approx(1.2))
    assert comparison.text() == "0.95x (0.50-1.20, 7 pairs)"


def test_one_lucky_run_of_either_side_does_not_move_the_median() -> None:
    ours = [80.0] * 6 + [1_000.0]
    reference = [100.0] * 6 + [1.0]
    assert paired_ratio(ours, reference, float).median == pytest.approx(0.8)


def test_the_median_pair_is_the_pair_whose_ratio_is_the_median() -> None:
    ours = [30.0, 10.0, 20.0]
    reference = [10.0, 10.0, 10.0]
    assert paired_ratio(ours, reference, float).median_pair == (20.0, 10.0)


def test_a_zero_reference_figure_gives_a_ratio_that_meets_no_target() -> None:
    assert paired_ratio([5.0], [0.0], float).ratios == (0.0,)


@pytest.mark.parametrize(("ours", "reference"), [([], []), ([1.0], [1.0, 2.0])])
def test_unequal_or_empty_sides_are_refused(ours: list[float], reference: list[float]) -> None:
    with pytest.raises(ValueError, match="same, non-zero number of runs"):
        paired_ratio(ours, reference, float)


def test_runs_are_interleaved_with_the_order_alternating_per_pair() -> None:
    calls: list[str] = []

    def run(side: str) -> str:
        calls.append(side)
        return f"{side}{len(calls)}"

    ours, reference = run_interleaved(lambda: run("A"), lambda: run("B"), pairs=4)
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert ours == ["A1", "A4", "A5", "A8"]
    assert reference == ["B2", "B3", "B6", "B7"]


def test_a_comparison_has_at_least_seven_pairs_by_default() -> None:
    assert PAIRS >= 7


def test_three_sides_run_once_per_round_with_the_order_reversed_every_other_round() -> None:
    calls: list[str] = []

    def run(side: str) -> str:
        calls.append(side)
        return f"{side}{len(calls)}"

    a, b, c = run_rounds([lambda: run("A"), lambda: run("B"), lambda: run("C")], rounds=3)
    assert calls == ["A", "B", "C", "C", "B", "A", "A", "B", "C"]
    assert (a, b, c) == (["A1", "A6", "A7"], ["B2", "B5", "B8"], ["C3", "C4", "C9"])
