"""Staleness is judged on the published value itself: a handler reads ``published`` once."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from exporter.catalogue import ExpositionInput
from exporter.exposition import render
from exporter.refresh_stats import RefreshStats
from exporter.refresher import Published


def _published(last_success_unix: float | None, replication_lag_s: float = 0.0) -> Published:
    stats = RefreshStats(
        last_duration_s=0.0,
        last_success_unix=last_success_unix,
        errors_by_stage=MappingProxyType({}),
        database_up=last_success_unix is not None,
        audit_progress=0.0,
        replication_lag_s=replication_lag_s,
    )
    return Published(
        snapshot=None,
        last_success_unix=last_success_unix,
        next_refresh_unix=0.0,
        exposition=render(ExpositionInput(None, stats, 0.1, 15.0, "0")),
        views=None,
        max_staleness_s=60.0,
        replication_lag_s=replication_lag_s,
    )


def test_nothing_published_yet_is_stale() -> None:
    assert _published(None).is_stale(0.0)


@pytest.mark.parametrize(
    ("now", "lag", "stale"),
    [
        pytest.param(1060.0, 0.0, False, id="exactly-max-age"),
        pytest.param(1060.5, 0.0, True, id="past-max-age"),
        pytest.param(1050.0, 10.0, False, id="lag-counts-up-to-max"),
        pytest.param(1050.0, 10.5, True, id="lag-pushes-past-max"),
    ],
)
def test_age_is_time_since_success_plus_the_standby_lag(
    now: float, lag: float, stale: bool
) -> None:
    assert _published(1000.0, lag).is_stale(now) is stale
