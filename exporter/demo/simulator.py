"""The fleet simulator: the thin shell around ``model.FleetModel``.

It loads its products' engines from the database, asks the model for one step, and applies
each resulting write in its own transaction through ``store``, as the orchestrator would (a
state change and its audit row commit together).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime

from exporter.db import DatabaseUnavailable
from exporter.demo.model import DEFAULT_RATES, DemoProduct, FleetModel, SimulationRates
from exporter.demo.store import StaleFleet, apply_write, load_fleet, open_database
from exporter.logs import log_event

logger = logging.getLogger("exporter.demo")

MAX_CATCH_UP_S = 60.0
"""A tick after a long stall (a database outage) advances the fleet by at most this much."""


class FleetSimulator:
    """Keeps the demo products' fleet moving: one model step per tick, written to the database.

    It needs no memory of a previous run: the first tick (and the first after a database
    error) loads the products' engines and their unfinished crash episodes from the database.
    """

    def __init__(
        self,
        dsn: str,
        *,
        products: Sequence[DemoProduct],
        rates: SimulationRates = DEFAULT_RATES,
        seed: int | None = None,
        tick_s: float = 1.0,
    ) -> None:
        self._products = tuple(products)
        self._model = FleetModel(self._products, rates=rates, rng=random.Random(seed))
        self._tick_s = tick_s
        self._database = open_database(dsn)
        self._loaded = False

    def start_incident(self, name: str, *, failed_fraction: float = 0.4) -> None:
        """A demo product's slug: a burst of failures there on the next tick, enough to make
        it critical. ``health-loop``: the first product's engines are no longer probed."""
        self._model.start_incident(name, failed_fraction=failed_fraction)

    async def tick(self) -> None:
        """Advance the fleet by ``tick_s`` simulated seconds."""
        await self._step(self._tick_s)

    async def close(self) -> None:
        await self._database.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_s`` until ``stop`` is set; database errors wait for the next tick."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        failing = False
        try:
            while not stop.is_set():
                now = loop.time()
                elapsed_s, last = min(now - last, MAX_CATCH_UP_S), now
                try:
                    await self._step(elapsed_s or self._tick_s)
                except DatabaseUnavailable as error:
                    if not failing:
                        log_event(
                            logger, logging.WARNING, "simulator_database_error", error=str(error)
                        )
                    failing = True
                else:
                    if failing:
                        log_event(logger, logging.INFO, "simulator_database_recovered")
                    failing = False
                next_at = last + self._tick_s
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
        finally:
            await self.close()

    async def _step(self, dt_s: float) -> None:
        if not self._loaded:
            await self._load()
        writes = self._model.step(dt_s, datetime.now(UTC))
        try:
            for write in writes:
                await apply_write(self._database, write)
        except StaleFleet as stale:
            self._loaded = False
            log_event(logger, logging.INFO, "simulator_resync", reason=str(stale))
        except BaseException:
            self._loaded = False
            raise

    async def _load(self) -> None:
        now = datetime.now(UTC)
        fleet = await load_fleet(self._database, self._products, now)
        self._model.load(fleet.engines, fleet.restart_progress, now, quotas=fleet.quotas)
        self._loaded = True
