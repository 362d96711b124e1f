"""The JSON read API on a real PostgreSQL: answers, isolation, validation and errors.

Expected figures are computed in the tests from the rows they insert, never read back from
the service's own code.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import psycopg2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from exporter.api import REFRESHER
from exporter.app import create_app
from exporter.domain import ENGINE_STATES
from exporter.openapi import openapi_document
from tests.support import canary
from tests.support.db import execute, fetch_value, insert_audit, insert_engine, insert_product
from tests.support.service import make_settings, wait_until

ACME_KEY = canary.secret("pk-sept-acme-" + "a" * 40)
GLOBEX_KEY = canary.secret("pk-sept-globex-" + "b" * 40)
ClientFactory = Any


async def _start(aiohttp_client: ClientFactory, dsn: str, **sections: Any) -> TestClient:
    app = create_app(make_settings(dsn, **sections))
    client: TestClient = await aiohttp_client(app)
    assert await app[REFRESHER].refresh_until_counted()
    return client


async def _refused_engines_query(client: TestClient, query: str) -> str:
    """The message of the 400 INVALID_PARAMETER answer that ``/engines?<query>`` must get."""
    response = await client.get(f"/engines?{query}", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 400
    body = await response.json()
    assert body["error"]["code"] == "INVALID_PARAMETER"
    message: str = body["error"]["message"]
    return message


@pytest.fixture
def two_products(fleet_db: Any) -> dict[str, Any]:
    """acme and globex, sharing user ids, with engines in every state and an audit history."""
    dsn = fleet_db.dsn
    acme = insert_product(dsn, slug="acme", api_key=ACME_KEY)
    globex = insert_product(dsn, slug="globex", api_key=GLOBEX_KEY)
    now: datetime = fetch_value(dsn, "SELECT now()")
    acme_statuses = ["running"] * 7 + ["sleeping", "stopped", "failed", "provisioning"]
    acme_engines = []
    for i, status in enumerate(acme_statuses):
        created = now - timedelta(hours=len(acme_statuses) - i)
        acme_engines.append(
            insert_engine(
                dsn, product_id=acme, user_id=f"user-{i}", status=status, created_at=created
            )
        )
    for i, status in enumerate(["running", "failed", "failed"]):
        insert_engine(dsn, product_id=globex, user_id=f"user-{i}", status=status)
    acme_audit = [
        ("provision", now - timedelta(minutes=5), 4000),
        ("provision", now - timedelta(minutes=30), 5001),
        ("provision", now - timedelta(minutes=59, seconds=50), None),
        ("provision", now - timedelta(minutes=61), 3000),
        ("provision", now - timedelta(days=2), 6000),
        ("health_failed", now - timedelta(minutes=10), None),
        ("health_failed", now - timedelta(hours=3), None),
        ("auto_restart_start", now - timedelta(minutes=9), None),
        ("auto_restart_start", now - timedelta(minutes=8), None),
        ("destroy", now - timedelta(days=1), None),
        ("reticulate", now - timedelta(minutes=1), None),
    ]
    for action, at, duration in acme_audit:
        insert_audit(dsn, product_id=acme, action=action, timestamp=at, duration_ms=duration)
    for _ in range(3):
        insert_audit(dsn, product_id=globex, action="provision", timestamp=now, duration_ms=100)
    insert_audit(dsn, product_id=globex, action="destroy", timestamp=now)
    return {
        "dsn": dsn,
        "acme": acme,
        "globex": globex,
        "acme_statuses": acme_statuses,
        "acme_audit": acme_audit,
        "acme_engines": acme_engines,
        "now": now,
    }


def _expected_metrics(
    audit: list[tuple[str, datetime, int | None]], now: datetime
) -> dict[str, Any]:
    recent = Counter(a for a, at, _ in audit if now - timedelta(hours=1) < at <= now)
    boots = [d for a, _, d in audit if a == "provision" and d is not None]
    return {
        "provisions_1h": recent["provision"],
        "crashes_1h": recent["health_failed"],
        "restarts_1h": recent["auto_restart_start"],
        "avg_boot_ms": round(sum(boots) / len(boots)),
        "total_provisions": sum(1 for a, _, _ in audit if a == "provision"),
        "total_destroys": sum(1 for a, _, _ in audit if a == "destroy"),
    }


async def test_status_counts_every_state_of_the_callers_product(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    response = await client.get("/status", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 200
    body = await response.json()
    statuses = Counter(two_products["acme_statuses"])
    assert body == {
        "total": len(two_products["acme_statuses"]),
        "by_status": {state: statuses[state] for state in ENGINE_STATES},
        "health": "degraded",
        "unhealthy_count": 1,
    }


async def test_status_of_another_product_is_its_own(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    body = await (await client.get("/status", headers={"X-Platform-Key": GLOBEX_KEY})).json()
    assert body["total"] == 3
    assert body["unhealthy_count"] == 2
    assert body["health"] == "critical"


async def test_metrics_match_an_independent_count_of_the_audit_rows(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    response = await client.get("/metrics", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 200
    expected = _expected_metrics(two_products["acme_audit"], two_products["now"])
    assert await response.json() == expected


async def test_metrics_of_rows_added_after_start_are_counted_on_the_next_refresh(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    dsn, acme = two_products["dsn"], two_products["acme"]
    insert_audit(dsn, product_id=acme, action="provision", duration_ms=1000)
    insert_audit(dsn, product_id=acme, action="destroy")
    assert await client.app[REFRESHER].refresh_once()
    body = await (await client.get("/metrics", headers={"X-Platform-Key": ACME_KEY})).json()
    audit = two_products["acme_audit"]
    assert body["total_provisions"] == sum(1 for a, _, _ in audit if a == "provision") + 1
    assert body["total_destroys"] == 2
    assert (
        body["provisions_1h"] == _expected_metrics(audit, two_products["now"])["provisions_1h"] + 1
    )


async def test_avg_boot_uses_only_the_configured_sample_of_recent_boots(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"], metrics={"boot_sample_size": 2})
    body = await (await client.get("/metrics", headers={"X-Platform-Key": ACME_KEY})).json()
    boots = [d for a, _, d in two_products["acme_audit"] if a == "provision" and d is not None]
    assert body["avg_boot_ms"] == round(sum(boots[-2:]) / 2)


async def test_avg_boot_is_null_without_any_boot_duration(
    aiohttp_client: ClientFactory, fleet_db: Any
) -> None:
    product = insert_product(fleet_db.dsn, slug="empty", api_key=ACME_KEY)
    insert_audit(fleet_db.dsn, product_id=product, action="provision")
    client = await _start(aiohttp_client, fleet_db.dsn)
    body = await (await client.get("/metrics", headers={"X-Platform-Key": ACME_KEY})).json()
    assert body["avg_boot_ms"] is None
    assert body["total_provisions"] == 1
    status = await (await client.get("/status", headers={"X-Platform-Key": ACME_KEY})).json()
    assert status == {
        "total": 0,
        "by_status": dict.fromkeys(ENGINE_STATES, 0),
        "health": "ok",
        "unhealthy_count": 0,
    }


async def test_snapshot_answers_carry_last_modified_and_cache_control(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"], refresh={"interval_s": 30})
    snapshot = client.server.app[REFRESHER].published.snapshot
    assert snapshot is not None
    for path in ("/status", "/metrics"):
        response = await client.get(path, headers={"X-Platform-Key": ACME_KEY})
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["Last-Modified"].endswith(" GMT")
        modified = parsedate_to_datetime(response.headers["Last-Modified"])
        assert modified == snapshot.taken_at.replace(microsecond=0)
        max_age = int(response.headers["Cache-Control"].removeprefix("private, max-age="))
        assert 0 <= max_age <= 30
        assert response.headers["Vary"] == "X-Platform-Key"


async def test_engines_pages_are_private_to_the_key(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    response = await client.get("/engines", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "private, max-age=0"
    assert response.headers["Vary"] == "X-Platform-Key"


@pytest.mark.parametrize("path", ["/engines", "/status", "/metrics"])
async def test_a_repeated_platform_key_header_is_refused_even_when_both_are_valid(
    aiohttp_client: ClientFactory, two_products: dict[str, Any], path: str
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    for keys in ([ACME_KEY, ACME_KEY], [ACME_KEY, GLOBEX_KEY]):
        headers = CIMultiDict([("X-Platform-Key", key) for key in keys])
        response = await client.get(path, headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "INVALID_PLATFORM_KEY"


async def test_engines_lists_the_callers_engines_in_creation_order(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    response = await client.get("/engines", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 200
    body = await response.json()
    assert body["total"] == len(two_products["acme_statuses"])
    assert [e["engine_id"] for e in body["engines"]] == two_products["acme_engines"]
    assert [e["status"] for e in body["engines"]] == two_products["acme_statuses"]
    first = body["engines"][0]
    assert set(first) == {
        "engine_id",
        "user_id",
        "status",
        "url",
        "engine_version",
        "created_at",
        "last_health_at",
    }
    assert first["created_at"].endswith("Z")
    assert first["last_health_at"] is None


async def test_engines_pages_through_the_fleet_without_overlap(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    seen: list[str] = []
    for offset in range(0, 20, 4):
        response = await client.get(
            "/engines",
            params={"limit": "4", "offset": str(offset)},
            headers={"X-Platform-Key": ACME_KEY},
        )
        body = await response.json()
        assert body["total"] == 11
        seen += [e["engine_id"] for e in body["engines"]]
    assert seen == two_products["acme_engines"]


async def test_next_links_walk_the_whole_fleet_in_order(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    seen: list[str] = []
    url: str | None = "/engines?limit=3"
    pages = 0
    while url is not None:
        response = await client.get(url, headers={"X-Platform-Key": ACME_KEY})
        assert response.status == 200
        body = await response.json()
        assert body["total"] == 11
        seen += [e["engine_id"] for e in body["engines"]]
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
        pages += 1
    assert seen == two_products["acme_engines"]
    assert pages == 4


async def test_next_links_keep_the_status_filter(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    headers = {"X-Platform-Key": ACME_KEY}
    first = await client.get("/engines?status=running&limit=5", headers=headers)
    link = first.headers["Link"]
    assert "status=running" in link
    second = await client.get(link[1 : link.index(">")], headers=headers)
    statuses = [e["status"] for e in (await second.json())["engines"]]
    assert statuses == ["running", "running"]
    assert "Link" not in second.headers


@pytest.mark.parametrize(
    "query",
    [
        "after=garbage",
        "after=",
        "after=" + "A" * 300,
        "after=MjAyNnxub3QtYS11dWlk",
        "after=1." + "g" * 32,
        "after=250000000000000000." + "a" * 32,
        "offset=0&after=x",
    ],
)
async def test_bad_cursors_are_refused(
    aiohttp_client: ClientFactory, two_products: dict[str, Any], query: str
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    assert "'after'" in await _refused_engines_query(client, query)


async def test_engines_filters_by_status_and_counts_the_filtered_total(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    response = await client.get(
        "/engines", params={"status": "running", "limit": "2"}, headers={"X-Platform-Key": ACME_KEY}
    )
    body = await response.json()
    assert body["total"] == 7
    assert len(body["engines"]) == 2
    assert {e["status"] for e in body["engines"]} == {"running"}


async def test_engines_pages_are_live_and_total_is_the_snapshots_count(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    """A page costs the database only the page: ``total`` is the count ``/status`` shows."""
    dsn = two_products["dsn"]
    client = await _start(aiohttp_client, dsn, refresh={"interval_s": 30})
    headers = {"X-Platform-Key": ACME_KEY}
    added = insert_engine(dsn, product_id=two_products["acme"], user_id="late", status="failed")
    body = await (await client.get("/engines?status=failed", headers=headers)).json()
    assert added in [engine["engine_id"] for engine in body["engines"]]
    status = await (await client.get("/status", headers=headers)).json()
    assert body["total"] == status["by_status"]["failed"] == 1
    assert await client.server.app[REFRESHER].refresh_once()
    body = await (await client.get("/engines?status=failed", headers=headers)).json()
    assert body["total"] == 2


async def test_engines_counts_live_when_the_snapshot_is_stale(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    dsn = two_products["dsn"]
    client = await _start(aiohttp_client, dsn, refresh={"interval_s": 0.1, "max_staleness_s": 0.3})
    headers = {"X-Platform-Key": ACME_KEY}
    locker = psycopg2.connect(dsn)
    try:
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")

        async def stale() -> bool:
            response = await client.get("/status", headers=headers)
            return response.status == 503

        await wait_until(stale, what="the snapshot to go stale")
        insert_engine(dsn, product_id=two_products["acme"], user_id="late", status="failed")
        body = await (await client.get("/engines", headers=headers)).json()
        assert body["total"] == len(body["engines"]) == 12
    finally:
        locker.rollback()
        locker.close()


async def test_engines_never_shows_another_products_engines(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    body = await (
        await client.get(
            "/engines", params={"status": "failed"}, headers={"X-Platform-Key": GLOBEX_KEY}
        )
    ).json()
    assert body["total"] == 2
    acme_ids = set(two_products["acme_engines"])
    assert not acme_ids & {e["engine_id"] for e in body["engines"]}


async def test_a_product_registered_after_start_works_after_one_refresh(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    new_key = "pk-sept-initech-" + "c" * 40
    response = await client.get("/status", headers={"X-Platform-Key": new_key})
    assert response.status == 401
    insert_product(two_products["dsn"], slug="initech", api_key=new_key)
    assert await client.app[REFRESHER].refresh_once()
    response = await client.get("/status", headers={"X-Platform-Key": new_key})
    assert response.status == 200
    assert (await response.json())["total"] == 0


BAD_KEYS = ["", "pk-sept-unknown-" + "x" * 40, ACME_KEY.upper(), "k" * 4096, ACME_KEY + "x"]


@pytest.mark.parametrize(
    "key", [None, *BAD_KEYS], ids=["missing", "empty", "unknown", "case", "huge", "suffixed"]
)
@pytest.mark.parametrize("path", ["/engines", "/status", "/metrics"])
async def test_bad_platform_keys_are_refused(
    aiohttp_client: ClientFactory, two_products: dict[str, Any], key: str | None, path: str
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    headers = {} if key is None else {"X-Platform-Key": key}
    response = await client.get(path, headers=headers)
    assert response.status == 401
    assert await response.json() == {
        "error": {
            "code": "INVALID_PLATFORM_KEY",
            "message": "Missing or unknown X-Platform-Key header.",
        }
    }


BAD_PARAMETERS = [
    ("status", "status=exploded"),
    ("status", "status="),
    ("status", "status=running%27%3B%20DROP%20TABLE%20engines%3B--"),
    ("status", "status=running&status=failed"),
    ("status", "status=RUNNING"),
    ("limit", "limit=0"),
    ("limit", "limit=1001"),
    ("limit", "limit=-1"),
    ("limit", "limit=abc"),
    ("limit", "limit=1e3"),
    ("limit", "limit=" + "9" * 40),
    ("limit", "limit=10.0"),
    ("limit", "limit="),
    ("offset", "offset=-1"),
    ("offset", "offset=1.5"),
    ("offset", "offset=x"),
    ("offset", "offset=" + "9" * 40),
]


@pytest.mark.parametrize(("name", "query"), BAD_PARAMETERS)
async def test_bad_engine_parameters_are_refused_and_change_nothing(
    aiohttp_client: ClientFactory, two_products: dict[str, Any], name: str, query: str
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    assert f"'{name}'" in await _refused_engines_query(client, query)
    assert fetch_value(two_products["dsn"], "SELECT count(*) FROM engines") == 14


@pytest.mark.parametrize(
    ("query", "unknown"),
    [("stauts=failed", "stauts"), ("status=failed&page=2", "page"), (f"{ACME_KEY}=1", ACME_KEY)],
)
async def test_an_unknown_engines_parameter_is_refused_without_being_echoed(
    aiohttp_client: ClientFactory, two_products: dict[str, Any], query: str, unknown: str
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    assert unknown not in await _refused_engines_query(client, query)


async def test_limits_at_the_edges_of_the_range_are_accepted(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    for query in ("limit=1", "limit=1000", "offset=0", "offset=1000000"):
        response = await client.get(f"/engines?{query}", headers={"X-Platform-Key": ACME_KEY})
        assert response.status == 200, query


async def test_unknown_path_and_wrong_method_use_the_error_envelope(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    missing = await client.get("/nope")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "NOT_FOUND"
    wrong = await client.post("/status", headers={"X-Platform-Key": ACME_KEY})
    assert wrong.status == 405
    assert (await wrong.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in wrong.headers["Allow"]


async def test_an_unexpected_failure_is_a_500_envelope_and_one_log_line(
    aiohttp_client: ClientFactory,
    two_products: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("exporter.api.fetch_engines_page", broken)
    response = await client.get("/engines", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 500
    assert await response.json() == {
        "error": {"code": "INTERNAL_ERROR", "message": "Internal error."}
    }
    failures = [r for r in caplog.records if r.getMessage().startswith("request_failed")]
    assert len(failures) == 1
    status = await client.get("/status", headers={"X-Platform-Key": ACME_KEY})
    assert status.status == 200


async def test_a_flood_of_unknown_keys_costs_the_database_nothing(
    aiohttp_client: ClientFactory, two_products: dict[str, Any], pg_server: Any
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    admin = pg_server.admin_dsn()
    execute(admin, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    calls_sql = (
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    fleet_calls = calls_sql.replace("current_database()", "%(db)s")
    db_name = fetch_value(two_products["dsn"], "SELECT current_database()")
    before = fetch_value(admin, fleet_calls, {"db": db_name})
    for i in range(200):
        key = "pk-sept-" + hashlib.sha256(str(i).encode()).hexdigest()
        for path in ("/engines", "/status", "/metrics"):
            assert (await client.get(path, headers={"X-Platform-Key": key})).status == 401
    after = fetch_value(admin, fleet_calls, {"db": db_name})
    assert after == before


async def test_openapi_document_is_valid_and_describes_the_real_answers(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    document = await (await client.get("/openapi.json")).json()
    validate(document)
    assert document == openapi_document("/prometheus")
    schemas = document["components"]["schemas"]

    def check(schema_name: str, instance: object) -> None:
        schema = {**schemas[schema_name], "components": {"schemas": schemas}}
        OAS30Validator(schema).validate(instance)

    headers = {"X-Platform-Key": ACME_KEY}
    check("EngineList", await (await client.get("/engines", headers=headers)).json())
    check("Status", await (await client.get("/status", headers=headers)).json())
    check("Metrics", await (await client.get("/metrics", headers=headers)).json())
    check("Readiness", await (await client.get("/readyz")).json())
    check("Error", await (await client.get("/engines?limit=0", headers=headers)).json())
    check("Error", await (await client.get("/status")).json())
    documented = set(document["paths"])
    assert documented == {"/engines", "/status", "/metrics", "/healthz", "/readyz", "/prometheus"}


async def test_landing_page_links_every_endpoint(
    aiohttp_client: ClientFactory, two_products: dict[str, Any]
) -> None:
    client = await _start(aiohttp_client, two_products["dsn"])
    response = await client.get("/")
    assert response.status == 200
    text = await response.text()
    for path in (
        "/prometheus",
        "/engines",
        "/status",
        "/metrics",
        "/openapi.json",
        "/healthz",
        "/readyz",
    ):
        assert f'href="{path}"' in text


async def test_database_down_answers_engines_with_503_promptly_and_stays_up(
    aiohttp_client: ClientFactory, private_pg: Any
) -> None:
    insert_product(private_pg.dsn, slug="acme", api_key=ACME_KEY)
    client = await _start(aiohttp_client, private_pg.dsn)
    private_pg.server.stop(mode="immediate")
    started = time.monotonic()
    response = await client.get("/engines", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "DATABASE_UNAVAILABLE"
    assert time.monotonic() - started < 10
    assert (await client.get("/healthz")).status == 200
    private_pg.server.start()
    response = await client.get("/engines", headers={"X-Platform-Key": ACME_KEY})
    assert response.status == 200


async def test_readyz_and_snapshot_endpoints_before_any_refresh(
    aiohttp_client: ClientFactory, unused_tcp_port: int
) -> None:
    dsn = f"host=127.0.0.1 port={unused_tcp_port} user=postgres dbname=none"
    app: web.Application = create_app(make_settings(dsn, database={"connect_timeout_s": 1}))
    client: TestClient = await aiohttp_client(app)
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["error"]["code"] == "FLEET_DATA_UNAVAILABLE"
    for path in ("/status", "/metrics", "/engines"):
        response = await client.get(path, headers={"X-Platform-Key": ACME_KEY})
        assert response.status == 503, path
        assert (await response.json())["error"]["code"] == "FLEET_DATA_UNAVAILABLE"
    assert (await client.get("/status")).status == 401
