"""HTTP handlers: parse the request, call one function, shape the response.

The fleet read API (``/engines``, ``/status``, ``/metrics``), the scrape endpoint, and the
small unauthenticated endpoints (``/healthz``, ``/readyz``, ``/``, ``/openapi.json``).
"""

from __future__ import annotations

import base64
import hmac
import math
import operator
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from aiohttp import web
from multidict import CIMultiDict

from exporter.config import Settings
from exporter.db import Database, DatabaseUnavailable
from exporter.domain import ENGINE_LISTING_FIELDS, EngineRecord
from exporter.errors import (
    ApiError,
    Handler,
    endpoint,
    method_not_allowed,
    not_found,
)
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.negotiation import accepts_gzip, choose_exposition, parse_credentials
from exporter.openapi import openapi_document
from exporter.paging import parse_engines_query
from exporter.platform_keys import PlatformKeys
from exporter.queries import EnginePosition, fetch_engines_page
from exporter.refresher import Published, Refresher
from exporter.routes import ROUTE_PATHS
from exporter.selfmetrics import LiveMetrics
from exporter.views import JSON_CONTENT_TYPE, RenderedViews
from exporter.webconfig import BasicAuthCheck, WebConfigSource

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
REFRESHER = web.AppKey("refresher", Refresher)
WEB_CONFIG = web.AppKey("web_config", WebConfigSource)
BASIC_AUTH = web.AppKey("basic_auth", BasicAuthCheck)
LIVE_METRICS = web.AppKey("live_metrics", LiveMetrics)
PLATFORM_KEYS = web.AppKey("platform_keys", PlatformKeys)

PLATFORM_KEY_HEADER = "X-Platform-Key"
#: Answers differ per platform key: no shared cache may keep them, none may mix them up.
PER_PRODUCT_HEADERS = {"Vary": PLATFORM_KEY_HEADER}


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_value(value: object) -> object:
    return _iso(value) if isinstance(value, datetime) else value


def _engine_json(engine: EngineRecord) -> dict[str, object]:
    """The engine's listing fields, by name; times in RFC 3339 UTC."""
    return {name: _json_value(getattr(engine, name)) for name in ENGINE_LISTING_FIELDS}


async def list_engines(request: web.Request) -> web.Response:
    refresher = request.app[REFRESHER]
    published = refresher.published
    fleet = request.app[PLATFORM_KEYS].fleet(
        request.headers.getall(PLATFORM_KEY_HEADER, ()), published.snapshot
    )
    query = parse_engines_query(request.query)
    # total: the count /status shows, so a page costs the database only the page; counted
    # live in the page's snapshot when the refresher's data is stale.
    stale = published.is_stale(refresher.now())
    total = None if stale else fleet.engines_matching(query.status)
    try:
        async with request.app[DATABASE].read_transaction() as tx:
            page = await fetch_engines_page(
                tx,
                fleet.product.product_id,
                query.status,
                query.limit,
                query.offset,
                query.after,
                total=total,
            )
    except DatabaseUnavailable as error:
        raise ApiError(
            503, "DATABASE_UNAVAILABLE", "The fleet database is not answering; try again shortly."
        ) from error
    headers = {**PER_PRODUCT_HEADERS, "Cache-Control": "private, max-age=0"}
    if len(page.engines) == query.limit:
        last = EnginePosition(page.engines[-1].created_at, page.engines[-1].engine_id)
        headers["Link"] = f'<{request.rel_url.with_query(query.next_page(last))}>; rel="next"'
    return web.json_response(
        {"engines": [_engine_json(engine) for engine in page.engines], "total": page.total},
        headers=headers,
    )


class SnapshotEndpoints:
    """``/status``, ``/metrics`` and the scrape endpoint: the answers served from the
    published snapshot, asked for by every scrape and every dashboard poll.

    They are bound to the app's refresher, platform keys, self-metrics and web configuration
    once, when the routes are added, rather than looking each up in the app on every
    request; a request reads ``published`` once and the clock once, so the answer and the
    staleness it is judged by belong to one refresh. Their response headers are built once
    per snapshot and ``max-age`` value (the scrape endpoint's once), not per request."""

    def __init__(self, app: web.Application) -> None:
        self._refresher = app[REFRESHER]
        self._clock = self._refresher.clock
        self._live = app[LIVE_METRICS]
        self._platform_keys = app[PLATFORM_KEYS]
        self._web_config = app[WEB_CONFIG]
        self._basic_auth = app[BASIC_AUTH]
        self._bearer_token = app[SETTINGS].prometheus.bearer_token
        self._json_headers: tuple[RenderedViews | None, int, CIMultiDict[str]] = (
            None,
            -1,
            CIMultiDict(),
        )
        self.status = self._snapshot_body(_STATUS_BODIES, audit_derived=False)
        self.metrics = self._snapshot_body(_METRICS_BODIES, audit_derived=True)

    def _snapshot_body(
        self, bodies_of: Callable[[RenderedViews], Mapping[str, bytes]], *, audit_derived: bool
    ) -> Handler:
        """A handler answering the caller's body, rendered with the snapshot, or the 503 that
        says why not (an ``audit_derived`` body only once the audit history is counted)."""
        refresher, clock, platform_keys = self._refresher, self._clock, self._platform_keys

        async def answer(request: web.Request) -> web.Response:
            published = refresher.published
            fleet = platform_keys.fleet(
                request.headers.getall(PLATFORM_KEY_HEADER, ()), published.snapshot
            )
            now = clock()
            if published.is_stale(now):
                raise ApiError(
                    503,
                    "FLEET_DATA_STALE",
                    "Fleet data is stale: the database has not been read successfully for too"
                    " long, or the standby it is read from lags too far behind its primary.",
                )
            snapshot = published.snapshot
            assert snapshot is not None, "authenticated against it"
            if audit_derived and not snapshot.audit_counted:
                raise _backfill_running(published, now)
            views = published.views
            assert views is not None, "views are published with every snapshot"
            max_age = max(0, math.ceil(published.next_refresh_unix - now))
            last_views, last_max_age, headers = self._json_headers
            if last_views is not views or last_max_age != max_age:
                headers = _json_headers(views, max_age)
                self._json_headers = (views, max_age, headers)
            return web.Response(body=bodies_of(views)[fleet.product.product_id], headers=headers)

        return answer

    async def prometheus(self, request: web.Request) -> web.Response:
        users = self._web_config.current().basic_auth_users
        if self._bearer_token is not None or users:
            await self._authorize_scrape(request, users)
        published = self._refresher.published
        openmetrics = choose_exposition(request.headers.get("Accept", "")) == "openmetrics"
        body = published.exposition.body(
            openmetrics=openmetrics, include_fleet=not published.is_stale(self._clock())
        )
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        return web.Response(
            body=self._live.answer(body, openmetrics=openmetrics, gzipped=gzipped),
            headers=_SCRAPE_HEADERS[openmetrics, gzipped],
        )

    async def _authorize_scrape(self, request: web.Request, users: Mapping[str, bytes]) -> None:
        """With a bearer token or basic auth ``users`` configured, one ``Authorization``
        header carrying one of them (the scheme in any case) is required."""
        token = self._bearer_token
        supplied = request.headers.getall("Authorization", ())
        credentials = parse_credentials(supplied[0]) if len(supplied) == 1 else None
        if credentials is not None:
            scheme, value = credentials
            if scheme == "bearer" and token is not None:
                if hmac.compare_digest(value.encode(), token.encode()):
                    return
            elif scheme == "basic" and users:
                pair = _basic_credentials(value)
                if pair is not None and await self._basic_auth.check(users, *pair):
                    return
        schemes = [name for name, on in (("Bearer", token), ('Basic realm="metrics"', users)) if on]
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "Valid credentials are required for this endpoint.",
            headers={"WWW-Authenticate": ", ".join(schemes)},
        )


def _json_headers(views: RenderedViews, max_age: int) -> CIMultiDict[str]:
    """The JSON snapshot answers' headers, kept while the snapshot and ``max_age`` stay the
    same (an answer copies them)."""
    return CIMultiDict(
        {
            "Content-Type": JSON_CONTENT_TYPE,
            "Last-Modified": views.last_modified,
            "Cache-Control": f"private, max-age={max_age}",
            **PER_PRODUCT_HEADERS,
        }
    )


_STATUS_BODIES = operator.attrgetter("status")
_METRICS_BODIES = operator.attrgetter("metrics")
_SCRAPE_HEADERS = {
    (openmetrics, gzipped): CIMultiDict(
        {
            "Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE,
            "Vary": "Accept, Accept-Encoding",
            **({"Content-Encoding": "gzip"} if gzipped else {}),
        }
    )
    for openmetrics in (False, True)
    for gzipped in (False, True)
}
"""The scrape answer's headers by format and compression (the answer copies them)."""


def _basic_credentials(token68: str) -> tuple[str, bytes] | None:
    try:
        user, separator, password = base64.b64decode(token68, validate=True).partition(b":")
        return (user.decode(), password) if separator else None
    except (ValueError, UnicodeDecodeError):
        return None


def _backfill_running(published: Published, now_unix: float) -> ApiError:
    """The answer while the audit history is being counted: a partial count is no total."""
    percent = math.floor(published.audit_progress * 1000) / 10
    retry_after = max(1, math.ceil(published.next_refresh_unix - now_unix))
    return ApiError(
        503,
        "AUDIT_BACKFILL_RUNNING",
        f"The audit log is still being counted ({percent:g}% done); lifetime figures are"
        " served once it is complete.",
        headers={"Retry-After": str(retry_after)},
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    refresher = request.app[REFRESHER]
    published = refresher.published
    if published.last_success_unix is None:
        raise ApiError(503, "FLEET_DATA_UNAVAILABLE", "Not ready: no refresh has succeeded yet.")
    if published.is_stale(refresher.now()):
        raise ApiError(503, "FLEET_DATA_STALE", "Not ready: fleet data is stale.")
    return web.json_response(
        {
            "status": "ready",
            "audit": "counted" if published.audit_counted else "backfilling",
            "audit_progress": round(published.audit_progress, 4),
        }
    )


_LANDING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>engine-fleet-exporter</title></head>
<body>
<h1>engine-fleet-exporter</h1>
<p>Fleet read API and Prometheus metrics for the engine orchestrator.</p>
<ul>
<li><a href="{prometheus}">{prometheus}</a> &mdash; Prometheus scrape endpoint</li>
<li><a href="{engines}">{engines}</a>, <a href="{status}">{status}</a>,
 <a href="{metrics}">{metrics}</a> &mdash; fleet read API (header <code>X-Platform-Key</code>)</li>
<li><a href="{openapi}">{openapi}</a> &mdash; OpenAPI description</li>
<li><a href="{healthz}">{healthz}</a>, <a href="{readyz}">{readyz}</a>
 &mdash; liveness and readiness</li>
</ul>
</body></html>
"""


async def landing(request: web.Request) -> web.Response:
    path = request.app[SETTINGS].prometheus.path
    return web.Response(
        text=_LANDING.format(prometheus=path, **ROUTE_PATHS), content_type="text/html"
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SETTINGS].prometheus.path))


def route_handlers(app: web.Application) -> Mapping[str, Handler]:
    """The handler of each route in ``ROUTE_PATHS`` and of the scrape endpoint
    (``prometheus``), by route name."""
    snapshot = SnapshotEndpoints(app)
    return {
        "engines": list_engines,
        "status": snapshot.status,
        "metrics": snapshot.metrics,
        "healthz": healthz,
        "readyz": readyz,
        "landing": landing,
        "openapi": openapi,
        "prometheus": snapshot.prometheus,
    }


def add_routes(app: web.Application, prometheus_path: str) -> None:
    """The routes, each answer counted under its route name (``other`` for a wrong method
    or an unknown path) in the app's HTTP self-metrics."""
    stats = app[LIVE_METRICS].http
    other = stats.observer("other")
    paths = {**ROUTE_PATHS, "prometheus": prometheus_path}
    for name, handler in route_handlers(app).items():
        app.router.add_get(paths[name], endpoint(handler, stats.observer(name)))
        app.router.add_route("*", paths[name], endpoint(method_not_allowed, other))
    # Any path at all, a line break (a decoded %0A) included.
    app.router.add_route("*", r"/{path:[\s\S]*}", endpoint(not_found, other))
