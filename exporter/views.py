"""The JSON snapshot answers (``/status``, ``/metrics``), rendered once per refresh.

Like the Prometheus exposition, every product's two bodies are serialised when a snapshot is
published, so a request only authenticates the caller and writes bytes that already exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime
from types import MappingProxyType

from exporter.domain import ActionCategories, FleetSnapshot, metrics_view, status_view

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


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


def render_views(
    snapshot: FleetSnapshot, critical_failed_ratio: float, categories: ActionCategories
) -> RenderedViews:
    fleets = snapshot.fleets
    return RenderedViews(
        last_modified=format_datetime(snapshot.taken_at.astimezone(UTC), usegmt=True),
        status=MappingProxyType(
            {pid: _json(status_view(f, critical_failed_ratio)) for pid, f in fleets.items()}
        ),
        metrics=MappingProxyType(
            {pid: _json(metrics_view(f, categories)) for pid, f in fleets.items()}
        ),
    )
