"""Side-by-side comparisons that a noisy machine cannot fool.

A ratio between two servers is never the best of a couple of runs: on shared cores the same
code reads 0.7x in one run and 1.2x in the next. Instead both sides are measured in
``PAIRS`` interleaved pairs (the order alternating, so a slow drift of the machine weighs on
both sides alike), each pair gives one ratio, and the comparison reports the median of those
ratios with their spread. A target counts as met only when the median meets it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

PAIRS = 7
"""Interleaved A/B pairs per comparison: the median of seven is robust to two outliers."""

Result = TypeVar("Result")


@dataclass(frozen=True)
class PairedRatio(Generic[Result]):
    """The pair ratios of ``ours / reference`` and the runs they came from, pair by pair."""

    ours: tuple[Result, ...]
    reference: tuple[Result, ...]
    ratios: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def low(self) -> float:
        return min(self.ratios)

    @property
    def high(self) -> float:
        return max(self.ratios)

    @property
    def median_pair(self) -> tuple[Result, Result]:
        """The runs of the pair whose ratio is the median (the lower middle one when even)."""
        order = sorted(range(len(self.ratios)), key=self.ratios.__getitem__)
        middle = order[(len(order) - 1) // 2]
        return self.ours[middle], self.reference[middle]

    def text(self) -> str:
        """``0.93x (0.85-1.02, 7 pairs)``: the median, then the spread of the pair ratios."""
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f}, {len(self.ratios)} pairs)"


def paired_ratio(
    ours: Sequence[Result], reference: Sequence[Result], figure: Callable[[Result], float]
) -> PairedRatio[Result]:
    """Pair the i-th run of each side; a reference figure of 0 gives a ratio of 0 (not met)."""
    if len(ours) != len(reference) or not ours:
        raise ValueError("a paired comparison needs the same, non-zero number of runs per side")
    ratios = tuple(
        figure(mine) / figure(theirs) if figure(theirs) else 0.0
        for mine, theirs in zip(ours, reference, strict=True)
    )
    return PairedRatio(tuple(ours), tuple(reference), ratios)


def run_interleaved(
    run_ours: Callable[[], Result], run_reference: Callable[[], Result], pairs: int = PAIRS
) -> tuple[list[Result], list[Result]]:
    """Run ``pairs`` pairs, ours first in even pairs and the reference first in odd ones."""
    ours, reference = run_rounds((run_ours, run_reference), pairs)
    return ours, reference


def run_rounds(
    sides: Sequence[Callable[[], Result]], rounds: int = PAIRS
) -> tuple[list[Result], ...]:
    """Run every side once per round, in the given order in even rounds and in the reverse
    order in odd ones (so that with more than two sides too, a drift of the machine weighs on
    all alike); one list of runs per side, round by round. The i-th runs of any two sides
    form a pair for ``paired_ratio``."""
    runs: tuple[list[Result], ...] = tuple([] for _ in sides)
    order = list(range(len(sides)))
    for index in range(rounds):
        for side in order if index % 2 == 0 else reversed(order):
            runs[side].append(sides[side]())
    return runs
