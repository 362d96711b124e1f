"""``create_app(settings)``: wires the pool, the refresher and the routes into one aiohttp app.

Resources are owned by the app through ``cleanup_ctx`` and released in reverse order on
shutdown: the refresher task is stopped before the pool it uses is closed. While the app
runs, errors the event loop reports go to the structured log, not bare to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from exporter import __version__
from exporter.api import (
    BASIC_AUTH,
    DATABASE,
    LIVE_METRICS,
    PLATFORM_KEYS,
    REFRESHER,
    SETTINGS,
    WEB_CONFIG,
    add_routes,
)
from exporter.config import Settings
from exporter.db import Database, is_cancelled_statement
from exporter.logs import log_event
from exporter.platform_keys import PlatformKeys
from exporter.refresher import Refresher
from exporter.selfmetrics import LiveMetrics
from exporter.webconfig import BasicAuthCheck, WebConfigSource

logger = logging.getLogger("exporter.app")

REFRESHER_STOP_RETRY_S = 0.5


def create_app(settings: Settings, *, refresh_in_background: bool = True) -> web.Application:
    """The service; without ``refresh_in_background`` nothing refreshes unless the caller
    drives the refresher (tests that play refreshes and backfill chunks one by one).
    ConfigError when the web configuration file is not usable."""
    app = web.Application()
    app[SETTINGS] = settings
    app[WEB_CONFIG] = WebConfigSource(settings.web.config_file)
    app[BASIC_AUTH] = BasicAuthCheck()
    app[LIVE_METRICS] = LiveMetrics()
    app[PLATFORM_KEYS] = PlatformKeys()
    database = Database(settings.database)
    app[DATABASE] = database
    app[REFRESHER] = Refresher(database, settings, version=__version__)
    add_routes(app, settings.prometheus.path)
    app.cleanup_ctx.append(_loop_errors_ctx)
    app.cleanup_ctx.append(_database_ctx)
    if refresh_in_background:
        app.cleanup_ctx.append(_refresher_ctx)
    return app


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One structured line per error the loop reports; none for a statement the server
    cancelled, which its caller has already reported (as the refresh's own line)."""
    error = context.get("exception")
    if is_cancelled_statement(error):
        return
    log_event(
        logger,
        logging.ERROR,
        "event_loop_error",
        message=str(context.get("message", "")).strip(),
        exc_info=error if isinstance(error, BaseException) else None,
    )


async def _loop_errors_ctx(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_log_loop_error)
    yield
    loop.set_exception_handler(previous)


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[DATABASE].close()


async def _refresher_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[REFRESHER].run(), name="fleet-refresher")
    yield
    # Cancelled again until it ends: on Python 3.11 asyncio.wait_for (used by aiopg around
    # each statement) can swallow a cancellation that lands as the statement completes, and
    # the refresher would then sleep on into its next round.
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=REFRESHER_STOP_RETRY_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task
