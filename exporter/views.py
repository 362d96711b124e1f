"""The JSON snapshot answers (``/status``, ``/metrics``): their shape, rendered once per refresh.

Like the Prometheus exposition, every product's two bodies are serialised when a snapshot is
published, so a request only authenticates the caller and writes bytes that already exist;
and like it, a product's bodies are kept with the ``ProductFleet`` they came from and
serialised again only when the figures they read change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime
from types import MappingProxyType

from exporter.domain import (
    ActionCategories,
    EventCategory,
    FleetSnapshot,
    ProductFleet,
    fleet_health,
    status_counts_for_json,
)
from exporter.loopguard import Pace, no_pace

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def status_view(fleet: ProductFleet, critical_failed_ratio: float) -> dict[str, object]:
    """The JSON body of ``GET /status``."""
    return {
        "total": fleet.total,
        "by_status": status_counts_for_json(fleet.engines_by_status),
        "health": fleet_health(fleet.failed, fleet.total, critical_failed_ratio).value,
        "unhealthy_count": fleet.failed,
    }


def metrics_view(fleet: ProductFleet, categories: ActionCategories) -> dict[str, object]:
    """The JSON body of ``GET /metrics``."""
    return {
        "provisions_1h": fleet.last_hour.get(EventCategory.PROVISION, 0),
        "crashes_1h": fleet.last_hour.get(EventCategory.CRASH, 0),
        "restarts_1h": fleet.last_hour.get(EventCategory.RESTART, 0),
        "avg_boot_ms": fleet.avg_boot_ms,
        "total_provisions": categories.lifetime_total(
            EventCategory.PROVISION, fleet.lifetime_by_action
        ),
        "total_destroys": categories.lifetime_total(
            EventCategory.DESTROY, fleet.lifetime_by_action
        ),
    }


@dataclass(frozen=True, slots=True)
class RenderedViews:
    last_modified: str
    """The snapshot's time as an HTTP date, for ``Last-Modified``."""
    status: Mapping[str, bytes]
    """``GET /status`` body per product id."""
    metrics: Mapping[str, bytes]
    """``GET /metrics`` body per product id."""


def _json(body: Mapping[str, object]) -> bytes:
    return json.dumps(body).encode()


def _reads(fleet: ProductFleet) -> tuple[object, ...]:
    """The figures ``status_view`` and ``metrics_view`` read: the bodies of a new fleet with
    the same ones (a census moves no JSON figure) are kept."""
    return fleet.engines_by_status, fleet.last_hour, fleet.avg_boot_ms, fleet.lifetime_by_action


@dataclass(frozen=True, slots=True)
class _ProductBodies:
    fleet: ProductFleet
    status: bytes
    metrics: bytes


class ViewsRenderer:
    """Renders the JSON bodies of each snapshot, reusing those of unchanged products.

    Not thread-safe: one owner (the refresher, under its lock) calls ``render``.
    """

    def __init__(self, critical_failed_ratio: float, categories: ActionCategories) -> None:
        self._critical_failed_ratio = critical_failed_ratio
        self._categories = categories
        self._products: dict[str, _ProductBodies] = {}
        self.last_rendered = 0
        """Products whose bodies the last ``render`` serialised (the others were reused)."""

    def render(self, snapshot: FleetSnapshot, pace: Pace = no_pace) -> RenderedViews:
        previous, current = self._products, {}
        self.last_rendered = 0
        for product_id, fleet in snapshot.fleets.items():
            pace()
            bodies = previous.get(product_id)
            if bodies is None or bodies.fleet is not fleet:
                if bodies is not None and _reads(bodies.fleet) == _reads(fleet):
                    bodies = _ProductBodies(fleet, bodies.status, bodies.metrics)
                else:
                    bodies = _ProductBodies(
                        fleet,
                        _json(status_view(fleet, self._critical_failed_ratio)),
                        _json(metrics_view(fleet, self._categories)),
                    )
                    self.last_rendered += 1
            current[product_id] = bodies
        self._products = current
        return RenderedViews(
            last_modified=format_datetime(snapshot.taken_at.astimezone(UTC), usegmt=True),
            status=MappingProxyType({pid: b.status for pid, b in current.items()}),
            metrics=MappingProxyType({pid: b.metrics for pid, b in current.items()}),
        )
