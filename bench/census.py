"""What the engine census costs the database: steady refreshes with it and without it.

The census (versions and probe figures) must read every engine row, because
``last_health_at`` is in no index, so it runs only every ``refresh.engine_census_interval_s``
in place of the per-status count. Two refreshers on the same database measure both kinds of
steady refresh, each after ~1,000 new audit rows: one takes the census on every refresh,
the other never after its first. They run in interleaved pairs (``bench.pairs``) and each
pair gives one ratio of database time (``pg_stat_statements``); the figure at the default
settings counts one census refresh in every ``interval / census interval`` refreshes.

``make bench`` runs it at its main scale; ``make bench BENCH_ARGS=--census-only`` runs it
alone at 1M engines.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench import dbtime
from bench.generate import Scale, append_audit_rows
from bench.pairs import PAIRS, PairedRatio, paired_ratio, run_interleaved
from bench.report import Row
from exporter import __version__
from exporter.config import RefreshSettings, Settings, settings_from_mapping
from exporter.db import Database
from exporter.refresher import Refresher

NEW_ROWS_PER_REFRESH = 1_000
DEFAULTS = RefreshSettings()
REFRESHES_PER_CENSUS = DEFAULTS.engine_census_interval_s / DEFAULTS.interval_s
"""At the defaults (15 s refreshes, a census every 60 s) one refresh in four takes it."""


@dataclass(frozen=True)
class SteadyRefresh:
    database_ms: float
    top_statement: str


@dataclass(frozen=True)
class CensusCost:
    per_refresh: PairedRatio[SteadyRefresh]
    """Census refresh over plain refresh, pair by pair."""
    at_defaults: tuple[float, ...]
    """Database time per census interval at the defaults over the same time without a census."""

    @property
    def at_defaults_median(self) -> float:
        return statistics.median(self.at_defaults)


def _settings(dsn: str, census_interval_s: float) -> Settings:
    return settings_from_mapping(
        {
            "database": {"dsn": dsn, "statement_timeout_s": 120},
            "refresh": {
                "interval_s": 3600,
                "max_staleness_s": 7200,
                "engine_census_interval_s": census_interval_s,
            },
        },
        environ={},
    )


def measure_census_cost(dsn: str, scale: Scale, pairs: int = PAIRS) -> CensusCost:
    """Both kinds of steady refresh on ``dsn`` (generated at ``scale``), interleaved."""
    loop = asyncio.new_event_loop()
    databases: list[Database] = []

    def refresher(census_interval_s: float) -> Refresher:
        settings = _settings(dsn, census_interval_s)
        database = Database(settings.database)
        databases.append(database)
        return Refresher(database, settings, version=__version__)

    with_census, without_census = refresher(0), refresher(3600)

    def steady(target: Refresher, census: bool) -> Callable[[], SteadyRefresh]:
        def run() -> SteadyRefresh:
            append_audit_rows(dsn, scale, NEW_ROWS_PER_REFRESH)
            dbtime.reset(dsn)
            if not loop.run_until_complete(target.refresh_once()):
                raise RuntimeError("refresh failed; see the log above")
            spent = dbtime.spent(dsn).total_ms
            snapshot = target.published.snapshot
            assert snapshot is not None
            if (snapshot.census_taken_at == snapshot.taken_at) != census:
                raise RuntimeError("the refresher did not take the census as configured")
            (top, _), *_ = dbtime.breakdown(dsn, limit=1)
            return SteadyRefresh(spent, top)

        return run

    try:
        for target in (with_census, without_census):
            if not loop.run_until_complete(target.refresh_until_counted()):
                raise RuntimeError("cold refresh or backfill failed; see the log above")
        ours, reference = run_interleaved(
            steady(with_census, census=True), steady(without_census, census=False), pairs
        )
    finally:
        for database in databases:
            loop.run_until_complete(database.close())
        loop.close()
    per_refresh = paired_ratio(ours, reference, lambda r: r.database_ms)
    k = REFRESHES_PER_CENSUS
    at_defaults = tuple((k - 1 + ratio) / k for ratio in per_refresh.ratios)
    return CensusCost(per_refresh, at_defaults)


def census_rows(label: str, cost: CensusCost, statement_name: Callable[[str], str]) -> list[Row]:
    per_refresh = cost.per_refresh
    ours, reference = per_refresh.median_pair
    low, high = min(cost.at_defaults), max(cost.at_defaults)
    return [
        Row(
            label,
            "database time of a steady refresh with the engine census, median pair",
            f"{ours.database_ms:,.1f} ms (top: {statement_name(ours.top_statement)})",
            f"without it: {reference.database_ms:,.1f} ms"
            f" (top: {statement_name(reference.top_statement)})",
            per_refresh.text(),
        ),
        Row(
            label,
            f"database time at the defaults: 1 census in {REFRESHES_PER_CENSUS:g} refreshes",
            "census every 60 s, counts every 15 s",
            "the same refreshes without the census",
            f"{cost.at_defaults_median:.2f}x ({low:.2f}-{high:.2f}, {len(cost.at_defaults)} pairs)",
            "<= 1.5x",
            cost.at_defaults_median <= 1.5,
        ),
    ]
