"""The literal exposition of a fixed fleet, in both formats: what every family must produce.

A change to a family's name, help, labels, sample order or number formatting shows here as a
diff of the exposition itself. After an intended change, regenerate the files with
``UPDATE_GOLDEN=1 pytest tests/unit/test_exposition_golden.py`` and read the diff.
"""

from __future__ import annotations

import gzip
import os
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest

from exporter.catalogue import ExpositionInput
from exporter.domain import (
    BootHistogram,
    EventCategory,
    FleetSnapshot,
    Product,
    ProductCensus,
    ProductFleet,
)
from exporter.exposition import render
from exporter.refresh_stats import RefreshStats

GOLDEN = Path(__file__).resolve().parent / "golden"
TAKEN_AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BOUNDS = (1.0, 2.5, 60.0)


def _fleet(
    slug: str,
    by_status: dict[str, int],
    by_action: dict[str, int],
    boots: BootHistogram,
    *,
    quota: int | None = None,
    census: ProductCensus | None = None,
) -> ProductFleet:
    return ProductFleet(
        product=Product(f"id-{slug}", slug, slug.title(), f"hash-{slug}", quota),
        engines_by_status=MappingProxyType(by_status),
        oldest_provisioning_age_s=12.5 if by_status.get("provisioning") else 0.0,
        lifetime_by_action=MappingProxyType(by_action),
        last_hour=MappingProxyType(dict.fromkeys(EventCategory, 0)),
        avg_boot_ms=None,
        boot_histogram=boots,
        census=census or ProductCensus.empty(),
    )


def golden_input() -> ExpositionInput:
    acme = _fleet(
        "acme",
        {"running": 7, "failed": 2, "provisioning": 1, "rebooting": 1},
        {"provision": 3, "destroy": 1, "reticulate": 2},
        BootHistogram(BOUNDS, (1, 2, 3, 3), 5.25, 3),
        quota=12,
        census=ProductCensus(2, 95.5, MappingProxyType({"2.4.0": 6, "2.3.0": 4, "other": 1})),
    )
    empty = _fleet("zeta", {}, {}, BootHistogram.empty(BOUNDS))
    snapshot = FleetSnapshot(
        taken_at=TAKEN_AT,
        fleets=MappingProxyType({"id-zeta": empty, "id-acme": acme}),
        audit_counted=True,
    )
    stats = RefreshStats(
        last_duration_s=0.125,
        last_success_unix=1_764_504_000.0,
        errors_by_stage=MappingProxyType({"connect": 1, "products": 0, "engines": 0, "audit": 2}),
        database_up=True,
        audit_progress=1.0,
        replication_lag_s=2.5,
    )
    return ExpositionInput(snapshot, stats, 0.10, 15.0, "9.9.9")


def _check(name: str, body: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_bytes(body)
    assert body.decode() == path.read_text(encoding="utf-8"), f"regenerate {name}, see docstring"


def test_text_exposition_of_a_fixed_fleet_is_exactly_the_golden_text() -> None:
    _check("exposition.txt", render(golden_input()).text.plain)


def test_openmetrics_exposition_of_a_fixed_fleet_is_exactly_the_golden_text() -> None:
    _check("exposition.openmetrics", render(golden_input()).openmetrics.plain)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_self_only_bodies_are_the_full_ones_without_any_fleet_series(openmetrics: bool) -> None:
    exposition = render(golden_input())
    full = exposition.body(openmetrics=openmetrics, include_fleet=True).plain.decode()
    self_only = exposition.body(openmetrics=openmetrics, include_fleet=False).plain.decode()
    assert 'product="' not in self_only
    assert set(self_only.splitlines()) < set(full.splitlines())


def test_gzipped_bodies_decompress_to_the_plain_ones() -> None:
    exposition = render(golden_input())
    for body in (exposition.text, exposition.openmetrics):
        assert gzip.decompress(body.gzipped) == body.plain
