"""The HTTP contract is declared once: routes, the engine listing and the OpenAPI document
agree because they are derived from the same tables."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime

import pytest
from multidict import MultiDict
from openapi_schema_validator import OAS30Validator

from exporter.api import _engine_json, route_handlers
from exporter.app import create_app
from exporter.config import ConfigError, settings_from_mapping
from exporter.domain import ENGINE_LISTING_FIELDS, EngineRecord
from exporter.openapi import openapi_document
from exporter.paging import DEFAULT_LIMIT, parse_engines_query
from exporter.queries import ENGINES_PAGE
from exporter.routes import ROUTE_PATHS
from tests.support.service import make_settings


def test_every_declared_path_is_routed_once_under_its_name() -> None:
    app = create_app(make_settings("postgresql://fleet@127.0.0.1:1/fleet"))
    handlers = route_handlers(app)
    assert list(handlers) == [*ROUTE_PATHS, "prometheus"]
    assert len(set(handlers.values())) == len(handlers)
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    for path in (*ROUTE_PATHS.values(), "/prometheus"):
        assert {("GET", path), ("HEAD", path), ("*", path)} <= routed


@pytest.mark.parametrize("path", sorted(ROUTE_PATHS.values()))
def test_the_scrape_path_may_not_shadow_a_route(path: str) -> None:
    with pytest.raises(ConfigError, match=r"^prometheus\.path: "):
        settings_from_mapping(
            {"database": {"dsn": "postgresql://fleet@db/fleet"}, "prometheus": {"path": path}},
            environ={},
        )


def _engine_schema() -> dict[str, object]:
    document = openapi_document("/prometheus")
    schema: dict[str, object] = document["components"]["schemas"]["Engine"]
    return schema


@pytest.mark.parametrize(
    ("url", "last_health_at"),
    [
        pytest.param("https://e1.example", datetime(2026, 12, 1, 10, 0, tzinfo=UTC), id="full"),
        pytest.param(None, None, id="nulls"),
    ],
)
def test_a_listed_engine_is_valid_by_the_schema_and_shows_every_field(
    url: str | None, last_health_at: datetime | None
) -> None:
    engine = EngineRecord(
        engine_id="6f1c3f9e-8a1b-4c55-9d0e-3b2a1c4d5e6f",
        user_id="user-1",
        status="running",
        url=url,
        engine_version="2.4.0",
        created_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        last_health_at=last_health_at,
    )
    body = json.loads(json.dumps(_engine_json(engine)))
    OAS30Validator(_engine_schema()).validate(body)
    assert list(body) == list(ENGINE_LISTING_FIELDS)
    assert body["created_at"] == "2026-12-01T09:30:00.000000Z"


def test_the_schema_refuses_an_engine_with_a_field_missing_or_added() -> None:
    validator = OAS30Validator(_engine_schema())
    engine = dict.fromkeys(ENGINE_LISTING_FIELDS, "x")
    engine |= {"engine_id": "6f1c3f9e-8a1b-4c55-9d0e-3b2a1c4d5e6f"}
    engine |= {"created_at": "2026-12-01T09:30:00Z", "last_health_at": None}
    assert validator.is_valid(engine)
    assert not validator.is_valid({k: v for k, v in engine.items() if k != "user_id"})
    assert not validator.is_valid({**engine, "api_key_hash": "secret"})
    assert not validator.is_valid({**engine, "user_id": None})


def test_the_page_statement_selects_the_listing_in_its_order() -> None:
    selected = ENGINES_PAGE.sql.split("SELECT", 1)[1].split("FROM", 1)[0]
    columns = [column.strip().removesuffix("::text") for column in selected.split(",")]
    assert columns == [f.name for f in fields(EngineRecord)]


def test_the_documented_default_limit_is_the_one_applied() -> None:
    document = openapi_document("/prometheus")
    parameter = document["paths"][ROUTE_PATHS["engines"]]["get"]["parameters"][0]
    documented = parameter["schema"]["properties"]["limit"]["default"]
    assert documented == DEFAULT_LIMIT == parse_engines_query(MultiDict()).limit
