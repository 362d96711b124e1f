"""GET /prometheus on a real PostgreSQL: families, values, formats, auth and the docs table."""

from __future__ import annotations

import asyncio
import gzip
import platform
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import __version__, queries
from exporter.api import REFRESHER
from exporter.app import create_app
from exporter.catalogue import FAMILIES
from exporter.db import Database
from exporter.domain import DOCUMENTED_ACTIONS, ENGINE_STATES
from exporter.selfmetrics import LIVE_FAMILIES, without_live
from tests.support import canary
from tests.support.db import execute, insert_audit, insert_engine, insert_product
from tests.support.service import make_settings

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
ClientFactory = Any


def _samples(
    text: str, *, openmetrics: bool = False
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parse = parse_om if openmetrics else parse_text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse(text)
        for sample in family.samples
    }


@pytest.fixture
def fleet(fleet_db: Any) -> dict[str, Any]:
    dsn = fleet_db.dsn
    key = "pk-sept-acme-" + "a" * 40
    acme = insert_product(dsn, slug="acme", api_key=key)
    insert_product(dsn, slug="globex", api_key="pk-sept-globex-" + "b" * 40)
    statuses = ["running"] * 5 + ["failed", "provisioning", "hibernating"]
    for i, status in enumerate(statuses):
        insert_engine(dsn, product_id=acme, user_id=f"u{i}", status=status)
    execute(
        dsn,
        "UPDATE engines SET created_at = now() - interval '300 seconds'"
        " WHERE status = 'provisioning'",
    )
    actions = ["provision"] * 4 + ["destroy", "health_failed", "reticulate", "boot"]
    durations = [500, 1000, 2500, 200_000]
    for i, action in enumerate(actions):
        insert_audit(
            dsn, product_id=acme, action=action, duration_ms=durations[i] if i < 4 else None
        )
    return {
        "dsn": dsn,
        "key": key,
        "statuses": statuses,
        "actions": actions,
        "durations": durations,
    }


async def _client(aiohttp_client: ClientFactory, dsn: str, **sections: Any) -> TestClient:
    app = create_app(make_settings(dsn, **sections))
    client: TestClient = await aiohttp_client(app)
    assert await app[REFRESHER].refresh_until_counted()
    return client


async def test_every_catalogue_family_is_exposed_with_help_and_type(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(aiohttp_client, fleet["dsn"])
    text = await (await client.get("/prometheus")).text()
    exposed = {family.name for family in parse_text(text)}
    documented = [*FAMILIES, *LIVE_FAMILIES]
    assert exposed == {f.name.removesuffix("_total") for f in documented}
    for family in documented:
        assert f"# HELP {family.name} " in text
        assert f"# TYPE {family.name} {family.kind}" in text
    assert "_created" not in text
    assert "user" not in re.sub(r"#.*", "", text)


async def test_engine_counts_cover_every_state_and_fold_unknown_ones(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(aiohttp_client, fleet["dsn"])
    samples = _samples(await (await client.get("/prometheus")).text())
    counts = Counter(fleet["statuses"])
    for state in ENGINE_STATES:
        key = ("engine_fleet_engines", (("product", "acme"), ("status", state)))
        assert samples[key] == counts[state]
    assert samples[("engine_fleet_engines", (("product", "acme"), ("status", "other")))] == 1
    assert samples[("engine_fleet_engines", (("product", "globex"), ("status", "running")))] == 0
    assert samples[("engine_fleet_failed_ratio", (("product", "acme"),))] == 1 / 8
    health = {
        state: samples[("engine_fleet_health", (("health", state), ("product", "acme")))]
        for state in ("ok", "degraded", "critical")
    }
    assert health == {"ok": 0, "degraded": 0, "critical": 1}
    oldest = samples[("engine_fleet_oldest_provisioning_seconds", (("product", "acme"),))]
    assert 300 <= oldest < 400
    assert samples[("engine_fleet_oldest_provisioning_seconds", (("product", "globex"),))] == 0


async def test_the_engine_counts_statement_agrees_with_the_census_it_stands_in_for(
    fleet: dict[str, Any],
) -> None:
    """Refreshes between censuses count engines with ``engine_counts``: the same counts the
    census sums over versions, and a creation time only where one is read (provisioning)."""
    database = Database(make_settings(fleet["dsn"]).database)
    try:
        async with database.read_transaction() as tx:
            now = (await queries.fetch_snapshot(tx)).started_at
            counts = await queries.fetch_engine_counts(tx)
            census = await queries.fetch_engine_census(tx, now)
    finally:
        await database.close()
    assert sorted(counts) == sorted(queries.engine_counts_of(census))
    times = {count.status: count.oldest_provisioning_at for count in counts}
    assert set(times) == set(fleet["statuses"])
    provisioning = times.pop("provisioning")
    assert provisioning is not None
    assert 300 <= (now - provisioning).total_seconds() < 400
    assert set(times.values()) == {None}


async def test_lifecycle_counters_cover_documented_actions_and_fold_unknown_ones(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(aiohttp_client, fleet["dsn"])
    samples = _samples(await (await client.get("/prometheus")).text())
    counts = Counter(fleet["actions"])

    def value(action: str) -> float:
        return samples[
            ("engine_fleet_lifecycle_events_total", (("action", action), ("product", "acme")))
        ]

    for action in DOCUMENTED_ACTIONS:
        assert value(action) == counts[action], action
    assert value("other") == 2


async def test_boot_histogram_matches_the_durations(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(
        aiohttp_client, fleet["dsn"], metrics={"boot_buckets_s": [0.5, 1, 2, 60]}
    )
    samples = _samples(await (await client.get("/prometheus")).text())

    def bucket(le: str) -> float:
        return samples[
            ("engine_fleet_boot_duration_seconds_bucket", (("le", le), ("product", "acme")))
        ]

    assert [bucket(le) for le in ("0.5", "1.0", "2.0", "60.0", "+Inf")] == [1, 2, 2, 3, 4]
    assert samples[("engine_fleet_boot_duration_seconds_count", (("product", "acme"),))] == 4
    assert (
        samples[("engine_fleet_boot_duration_seconds_sum", (("product", "acme"),))]
        == sum(fleet["durations"]) / 1000
    )


async def test_self_metrics_report_the_refresh(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(aiohttp_client, fleet["dsn"])
    samples = _samples(await (await client.get("/prometheus")).text())
    assert samples[("engine_fleet_database_up", ())] == 1
    assert samples[("engine_fleet_exporter_build_info", (("version", __version__),))] == 1
    assert samples[("engine_fleet_exporter_last_refresh_success_timestamp_seconds", ())] > 1e9
    assert samples[("engine_fleet_exporter_refresh_duration_seconds", ())] > 0
    for stage in ("connect", "products", "engines", "audit"):
        assert samples[("engine_fleet_exporter_refresh_errors_total", (("stage", stage),))] == 0


async def test_prometheus_accept_header_gets_openmetrics_with_identical_values(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(aiohttp_client, fleet["dsn"])
    om = await client.get("/prometheus", headers={"Accept": PROMETHEUS_ACCEPT})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    om_text = await om.text()
    assert om_text.endswith("# EOF\n")
    text = await client.get("/prometheus", headers={"Accept": "text/plain"})
    assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert _fleet_samples(om_text, openmetrics=True) == _fleet_samples(await text.text())


async def test_gzip_is_served_when_accepted(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(aiohttp_client, fleet["dsn"])
    plain = await (await client.get("/prometheus", headers={"Accept-Encoding": "identity"})).read()
    response = await client.get(
        "/prometheus", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    unzipped = gzip.decompress(await response.read()).decode()
    assert _fleet_samples(unzipped) == _fleet_samples(plain.decode())
    om = await client.get(
        "/prometheus",
        headers={"Accept-Encoding": "gzip", "Accept": PROMETHEUS_ACCEPT},
        auto_decompress=False,
    )
    unzipped = gzip.decompress(await om.read()).decode()
    assert unzipped.endswith("# EOF\n")
    assert _samples(unzipped, openmetrics=True)[("python_info", PYTHON_INFO)] == 1


async def test_bearer_token_is_required_when_configured(
    aiohttp_client: ClientFactory, fleet: dict[str, Any], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(canary.secret("s3cret-token") + "\n")
    client = await _client(
        aiohttp_client, fleet["dsn"], prometheus={"bearer_token_file": str(token_file)}
    )
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        response = await client.get("/prometheus", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "UNAUTHORIZED"
    response = await client.get("/prometheus", headers={"Authorization": "Bearer s3cret-token"})
    assert response.status == 200
    response = await client.get("/prometheus", headers={"Authorization": "bEARER  s3cret-token"})
    assert response.status == 200
    twice = CIMultiDict([("Authorization", "Bearer s3cret-token")] * 2)
    response = await client.get("/prometheus", headers=twice)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "UNAUTHORIZED"


async def test_promtool_lints_the_real_text_exposition_clean(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (install the Debian package 'prometheus')")
    client = await _client(aiohttp_client, fleet["dsn"])
    body = await (await client.get("/prometheus", headers={"Accept": "text/plain"})).read()
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


PYTHON_INFO = tuple(
    sorted(
        {
            "implementation": platform.python_implementation(),
            "major": str(sys.version_info.major),
            "minor": str(sys.version_info.minor),
            "patchlevel": str(sys.version_info.micro),
            "version": platform.python_version(),
        }.items()
    )
)


def _fleet_samples(
    text: str, *, openmetrics: bool = False
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples without the per-request self-metrics, which move between two scrapes."""
    return _samples(without_live(text.encode()).decode(), openmetrics=openmetrics)


def _http_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        key: value
        for key, value in _samples(text).items()
        if key[0].startswith("engine_fleet_exporter_http_")
    }


async def test_http_self_metrics_count_every_answer_by_route_and_code(
    aiohttp_client: ClientFactory, fleet: dict[str, Any]
) -> None:
    client = await _client(aiohttp_client, fleet["dsn"])
    key = {"X-Platform-Key": fleet["key"]}
    for path, headers in [
        ("/status", key),
        ("/status", key),
        ("/status", {}),
        ("/engines?limit=0", key),
        ("/no/such/" + "x" * 40, {}),
        ("/healthz", {}),
    ]:
        await client.get(path, headers=headers)
    await client.post("/status")
    # The first scrape: its self-metrics are rendered now, not taken from a recent scrape.
    text = await (await client.get("/prometheus", headers={"Accept": "text/plain"})).text()
    samples = _http_samples(text)
    requests = "engine_fleet_exporter_http_requests_total"
    assert samples[(requests, (("code", "200"), ("handler", "status")))] == 2
    assert samples[(requests, (("code", "401"), ("handler", "status")))] == 1
    assert samples[(requests, (("code", "400"), ("handler", "engines")))] == 1
    assert samples[(requests, (("code", "404"), ("handler", "other")))] == 1
    assert samples[(requests, (("code", "405"), ("handler", "other")))] == 1
    assert samples[(requests, (("code", "200"), ("handler", "healthz")))] == 1
    count = "engine_fleet_exporter_http_request_duration_seconds_count"
    assert samples[(count, (("handler", "status"),))] == 3
    inf = (("handler", "status"), ("le", "+Inf"))
    assert samples[("engine_fleet_exporter_http_request_duration_seconds_bucket", inf)] == 3
    assert all("xxxx" not in str(labels) for _, labels in samples)
