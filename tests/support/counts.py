"""What the tests compare: audit counts from ``count(*)`` and the counts the exporter shows."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from exporter.refresher import Refresher
from tests.support.db import fetch_all

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def audit_counts_by_slug(dsn: str) -> dict[tuple[str, str], int]:
    """``count(*)`` per product slug and action, as the lifecycle series label them."""
    rows = fetch_all(
        dsn,
        "SELECT p.slug, a.action, count(*) FROM audit_log a JOIN products p ON p.id = a.product_id"
        " GROUP BY 1, 2",
    )
    return {(slug, action): int(n) for slug, action, n in rows}


def audit_counts_by_product(dsn: str) -> dict[tuple[str, str], int]:
    """``count(*)`` per product id and action, as the snapshot keys them."""
    rows = fetch_all(
        dsn,
        "SELECT product_id::text, action, count(*) FROM audit_log"
        " WHERE product_id IS NOT NULL GROUP BY 1, 2",
    )
    return {(product_id, action): int(n) for product_id, action, n in rows}


def snapshot_counts(refresher: Refresher) -> dict[tuple[str, str], int]:
    """The non-zero lifetime counts of the published snapshot, by product id and action."""
    snapshot = refresher.published.snapshot
    assert snapshot is not None
    return snapshot.lifetime_counts()


def parse_samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client: TestClient) -> Samples:
    return parse_samples(await (await client.get("/prometheus")).text())


def lifecycle_counts(samples: Samples) -> dict[tuple[str, str], int]:
    """The non-zero ``engine_fleet_lifecycle_events_total`` samples by product and action."""
    counts = {}
    for (name, labels), value in samples.items():
        if name == "engine_fleet_lifecycle_events_total" and value:
            label = dict(labels)
            counts[(label["product"], label["action"])] = int(value)
    return counts
