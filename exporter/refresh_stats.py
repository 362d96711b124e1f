"""What a refresh reports about itself: the stages it can fail in and its own figures.

The refresher fills these in; the catalogue's self-metrics read them. A module of its own so
that the catalogue needs nothing of the refresher.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class RefreshStage(enum.StrEnum):
    """Where a refresh can fail; each has its own ``refresh_errors_total`` series."""

    CONNECT = "connect"
    PRODUCTS = "products"
    ENGINES = "engines"
    AUDIT = "audit"
    BACKFILL = "backfill"
    """A chunk of the audit history, counted between refreshes."""


REFRESH_STAGES: tuple[RefreshStage, ...] = tuple(RefreshStage)


@dataclass(frozen=True, slots=True)
class RefreshStats:
    """The refresher's own figures, current as of its last attempt."""

    last_duration_s: float
    last_success_unix: float | None
    errors_by_stage: Mapping[str, int]
    database_up: bool
    audit_progress: float
    """Share of the audit history counted, 0..1."""
    replication_lag_s: float
    """How far behind its primary the standby of the last successful refresh was (0 on a
    primary)."""
