"""The fleet insight series on a real PostgreSQL, against ground truth computed here in SQL:
probe overdue and oldest probe age, engines by version, quota, and the census cadence."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.api import REFRESHER
from exporter.app import create_app
from exporter.refresher import Refresher
from tests.support.db import execute, fetch_all, fetch_value, insert_engine, insert_product
from tests.support.service import make_settings

ClientFactory = Any
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
OVERDUE_S = 90
MAX_VERSIONS = 3


def _samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse_text(text)
        for sample in family.samples
    }


def _of(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _series(samples: Samples, name: str, product: str) -> dict[str, float]:
    return {
        dict(labels)["version"]: value
        for (sample, labels), value in samples.items()
        if sample == name and dict(labels)["product"] == product
    }


@pytest.fixture
def fleet(fleet_db: Any) -> dict[str, Any]:
    dsn = fleet_db.dsn
    products = {
        "acme": insert_product(
            dsn,
            slug="acme",
            api_key="pk-sept-acme-" + "a" * 40,
            policy={"max_engines": 40, "rate_limit_rpm": 600},
        ),
        "globex": insert_product(
            dsn, slug="globex", api_key="pk-sept-globex-" + "b" * 40, policy={}
        ),
        "initech": insert_product(
            dsn,
            slug="initech",
            api_key="pk-sept-initech-" + "c" * 40,
            policy={"max_engines": "lots"},
        ),
        "hooli": insert_product(
            dsn, slug="hooli", api_key="pk-sept-hooli-" + "d" * 40, policy={"max_engines": -3}
        ),
        "umbrella": insert_product(
            dsn, slug="umbrella", api_key="pk-sept-umbr-" + "e" * 40, policy=[{"max_engines": 5}]
        ),
        "wayne": insert_product(
            dsn, slug="wayne", api_key="pk-sept-wayne-" + "f" * 40, policy={"max_engines": 12.0}
        ),
    }
    acme, globex = products["acme"], products["globex"]
    # acme: running engines probed recently, long ago and never; other states probed long
    # ago (not running, so never overdue); seven versions, more than MAX_VERSIONS.
    probes = [5, 10, 20, 200, 400, 3600, None, None]
    versions = ["v2", "v2", "v2", "v1", "v1", "v3", "v2", "v4"]
    for i, (age, version) in enumerate(zip(probes, versions, strict=True)):
        insert_engine(
            dsn, product_id=acme, user_id=f"r{i}", status="running", engine_version=version
        )
        if age is not None:
            execute(
                dsn,
                "UPDATE engines SET last_health_at = now() - %(age)s * interval '1 s'"
                " WHERE user_id = %(user)s",
                {"age": age, "user": f"r{i}"},
            )
    others = [
        ("stopped", "v1"),
        ("failed", "v5"),
        ("sleeping", "v6"),
        ("provisioning", "v7"),
        ("hibernating", "v1"),
        ("sleeping", "v3"),
    ]
    for i, (status, version) in enumerate(others):
        insert_engine(dsn, product_id=acme, user_id=f"o{i}", status=status, engine_version=version)
    execute(
        dsn,
        "UPDATE engines SET last_health_at = now() - interval '2 days' WHERE status <> 'running'",
    )
    # globex: only engines never probed, of one version.
    for i in range(3):
        insert_engine(
            dsn,
            product_id=globex,
            user_id=f"g{i}",
            status="running",
            engine_version="september-engine:2.3.0",
        )
    return {"dsn": dsn, "products": products}


async def _scraped(
    aiohttp_client: ClientFactory, dsn: str, **sections: Any
) -> tuple[TestClient, Samples]:
    settings = make_settings(
        dsn,
        health={"probe_overdue_s": OVERDUE_S},
        metrics={"max_versions": MAX_VERSIONS},
        **sections,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    assert await client.app[REFRESHER].refresh_once()
    return client, await _scrape(client)


async def _scrape(client: TestClient) -> Samples:
    return _samples(await (await client.get("/prometheus")).text())


def _truth_overdue(dsn: str, product_id: str) -> int:
    return int(
        fetch_value(
            dsn,
            "SELECT count(*) FROM engines WHERE product_id = %(p)s AND status = 'running'"
            " AND (last_health_at IS NULL OR last_health_at < now() - %(s)s * interval '1 s')",
            {"p": product_id, "s": OVERDUE_S},
        )
    )


def _truth_versions(dsn: str, product_id: str, limit: int) -> dict[str, float]:
    rows = fetch_all(
        dsn,
        "SELECT engine_version, count(*) FROM engines WHERE product_id = %(p)s"
        " GROUP BY engine_version ORDER BY count(*) DESC, engine_version LIMIT %(n)s",
        {"p": product_id, "n": limit},
    )
    total = fetch_value(
        dsn, "SELECT count(*) FROM engines WHERE product_id = %(p)s", {"p": product_id}
    )
    kept = {version: float(count) for version, count in rows}
    return {**kept, "other": float(total - sum(kept.values()))}


async def test_probe_figures_equal_the_engine_rows(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    dsn, products = fleet["dsn"], fleet["products"]
    client, samples = await _scraped(aiohttp_client, dsn)
    snapshot = client.app[REFRESHER].published.snapshot
    assert snapshot is not None
    assert snapshot.census_taken_at is not None

    for slug in ("acme", "globex"):
        overdue = _of(samples, "engine_fleet_engines_probe_overdue", product=slug)
        assert overdue == _truth_overdue(dsn, products[slug]), slug
    assert _of(samples, "engine_fleet_engines_probe_overdue", product="acme") == 5

    oldest = fetch_value(
        dsn,
        "SELECT min(last_health_at) FROM engines WHERE product_id = %(p)s AND status = 'running'",
        {"p": products["acme"]},
    )
    expected_age = (snapshot.census_taken_at - oldest).total_seconds()
    age = _of(samples, "engine_fleet_oldest_probe_age_seconds", product="acme")
    assert age == pytest.approx(expected_age, abs=1e-6)
    assert 3600 <= expected_age < 3700
    # Never probed at all: overdue, but no age.
    assert _of(samples, "engine_fleet_oldest_probe_age_seconds", product="globex") == 0
    assert _of(samples, "engine_fleet_engines_probe_overdue", product="globex") == 3
    assert _of(samples, "engine_fleet_oldest_probe_age_seconds", product="initech") == 0


async def test_versions_are_the_largest_ones_and_the_rest_is_other(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    dsn, products = fleet["dsn"], fleet["products"]
    _, samples = await _scraped(aiohttp_client, dsn)

    acme = _series(samples, "engine_fleet_engines_by_version", "acme")
    assert acme == _truth_versions(dsn, products["acme"], MAX_VERSIONS)
    assert acme == {"v2": 4.0, "v1": 4.0, "v3": 2.0, "other": 4.0}
    assert (
        sum(acme.values())
        == _of(samples, "engine_fleet_engines", product="acme", status="running") + 6
    )
    assert _series(samples, "engine_fleet_engines_by_version", "globex") == {
        "september-engine:2.3.0": 3.0,
        "other": 0.0,
    }
    assert _series(samples, "engine_fleet_engines_by_version", "hooli") == {"other": 0.0}


async def test_quota_is_the_policy_max_engines_and_absent_when_unusable(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    _, samples = await _scraped(aiohttp_client, fleet["dsn"])

    quotas = {
        dict(labels)["product"]: value
        for (name, labels), value in samples.items()
        if name == "engine_fleet_quota_engines"
    }
    assert quotas == {"acme": 40.0, "wayne": 12.0}


async def test_status_counts_from_a_census_equal_the_plain_count(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client, with_census = await _scraped(
        aiohttp_client, fleet["dsn"], refresh={"engine_census_interval_s": 3600}
    )
    assert await client.app[REFRESHER].refresh_once()
    without_census = await _scrape(client)

    def counts(samples: Samples) -> dict[Any, float]:
        return {key: value for key, value in samples.items() if key[0] == "engine_fleet_engines"}

    assert counts(with_census) == counts(without_census)
    assert len(counts(with_census)) == 6 * 7
    name = "engine_fleet_oldest_provisioning_seconds"
    before = _of(with_census, name, product="acme")
    after = _of(without_census, name, product="acme")
    assert before is not None
    assert after is not None
    assert 0 <= after - before < 5


async def test_census_series_are_carried_until_the_next_census_and_counts_move_on(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    dsn, products = fleet["dsn"], fleet["products"]
    client, first = await _scraped(aiohttp_client, dsn, refresh={"engine_census_interval_s": 3600})
    refresher: Refresher = client.app[REFRESHER]
    taken_at = refresher.published.snapshot.census_taken_at  # type: ignore[union-attr]
    execute(
        dsn,
        "UPDATE engines SET engine_version = 'v9', last_health_at = now() WHERE product_id = %(p)s",
        {"p": products["acme"]},
    )
    execute(dsn, "DELETE FROM engines WHERE user_id = 'o0'")

    assert await refresher.refresh_once()
    carried = await _scrape(client)

    snapshot = refresher.published.snapshot
    assert snapshot is not None
    assert snapshot.census_taken_at == taken_at
    assert snapshot.taken_at > taken_at
    for name in (
        "engine_fleet_engines_by_version",
        "engine_fleet_engines_probe_overdue",
        "engine_fleet_oldest_probe_age_seconds",
    ):
        assert {k: v for k, v in carried.items() if k[0] == name} == {
            k: v for k, v in first.items() if k[0] == name
        }, name
    assert _of(carried, "engine_fleet_engines", product="acme", status="stopped") == 0


async def test_a_new_product_brings_the_census_forward(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    dsn = fleet["dsn"]
    client, _ = await _scraped(aiohttp_client, dsn, refresh={"engine_census_interval_s": 3600})
    refresher: Refresher = client.app[REFRESHER]
    taken_at = refresher.published.snapshot.census_taken_at  # type: ignore[union-attr]
    newcomer = insert_product(dsn, slug="stark", api_key="pk-sept-stark-" + "g" * 40)
    insert_engine(dsn, product_id=newcomer, user_id="s0", status="running", engine_version="v8")

    assert await refresher.refresh_once()
    samples = await _scrape(client)

    snapshot = refresher.published.snapshot
    assert snapshot is not None
    assert snapshot.census_taken_at > taken_at
    assert _series(samples, "engine_fleet_engines_by_version", "stark") == {"v8": 1.0, "other": 0.0}
    assert _of(samples, "engine_fleet_quota_engines", product="stark") == 1000


async def test_with_a_zero_interval_every_refresh_takes_a_census(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    dsn, products = fleet["dsn"], fleet["products"]
    client, _ = await _scraped(aiohttp_client, dsn, refresh={"engine_census_interval_s": 0})
    execute(
        dsn,
        "UPDATE engines SET last_health_at = now() - interval '1 s' WHERE product_id = %(p)s",
        {"p": products["acme"]},
    )
    execute(dsn, "UPDATE engines SET engine_version = 'v9' WHERE user_id LIKE 'r%%'")

    assert await client.app[REFRESHER].refresh_once()
    samples = await _scrape(client)

    assert _of(samples, "engine_fleet_engines_probe_overdue", product="acme") == 0
    assert _truth_overdue(dsn, products["acme"]) == 0
    age = _of(samples, "engine_fleet_oldest_probe_age_seconds", product="acme")
    assert age is not None
    assert 1 <= age < 60
    assert _series(samples, "engine_fleet_engines_by_version", "acme") == _truth_versions(
        dsn, products["acme"], MAX_VERSIONS
    )


async def test_probe_age_crosses_the_overdue_limit_at_the_snapshot_time(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    """An engine probed just inside the limit is not overdue; just outside it is."""
    dsn, products = fleet["dsn"], fleet["products"]
    execute(dsn, "DELETE FROM engines WHERE product_id = %(p)s", {"p": products["acme"]})
    for user, age in (("inside", OVERDUE_S - 5), ("outside", OVERDUE_S + 5)):
        insert_engine(dsn, product_id=products["acme"], user_id=user, status="running")
        execute(
            dsn,
            "UPDATE engines SET last_health_at = now() - %(age)s * interval '1 s'"
            " WHERE user_id = %(u)s",
            {"age": age, "u": user},
        )

    _, samples = await _scraped(aiohttp_client, dsn)

    assert _of(samples, "engine_fleet_engines_probe_overdue", product="acme") == 1
    age = _of(samples, "engine_fleet_oldest_probe_age_seconds", product="acme")
    assert age is not None
    assert OVERDUE_S + 5 <= age < OVERDUE_S + 60
