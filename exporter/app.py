"""``create_app(settings)``: wires the pool, the refresher and the routes into one aiohttp app.

Resources are owned by the app through ``cleanup_ctx`` and released in reverse order on
shutdown: the refresher task is stopped before the pool it uses is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from exporter import __version__
from exporter.api import DATABASE, REFRESHER, SETTINGS, add_routes
from exporter.config import Settings
from exporter.db import Database
from exporter.refresher import Refresher


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    database = Database(settings.database)
    app[DATABASE] = database
    app[REFRESHER] = Refresher(database, settings, version=__version__)
    add_routes(app, settings.prometheus.path)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_refresher_ctx)
    return app


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[DATABASE].close()


async def _refresher_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[REFRESHER].run(), name="fleet-refresher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
