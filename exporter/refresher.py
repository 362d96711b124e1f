"""The background refresher: database -> one immutable ``FleetSnapshot`` per interval.

Each refresh runs in one read-only REPEATABLE READ transaction (one consistent snapshot of
products, engines and the audit log), builds the snapshot, renders the Prometheus exposition
and the JSON bodies for it and publishes them with a single reference swap. Rendering costs
what changed: a product whose figures equal the previous snapshot's keeps its fleet object
and its rendered pieces. Fleet state is published from the first refresh on; the audit
history that existed at start is counted by the backfill in bounded chunks between
refreshes, while every refresh reads the rows added since (``exporter.audit_counter``).
Engines are counted per status on every refresh; the engine census (versions, probe figures),
which must read every engine row, replaces that count every
``refresh.engine_census_interval_s`` (and when a product appears) and is carried, with the
time it was taken, in between.
Nothing downstream ever queries the database because of a scrape or a ``/status`` call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from exporter import queries
from exporter.audit import AuditTally, DbSnapshot, ProductAudit
from exporter.audit_counter import AuditCounter, FirstRead, LiveRead
from exporter.catalogue import ExpositionInput
from exporter.config import Settings
from exporter.db import Database, DatabaseUnavailable
from exporter.domain import (
    ActionCategories,
    EngineCensus,
    EngineGroup,
    FleetSnapshot,
    Product,
    ProductCensus,
    ProductFleet,
    engine_census,
)
from exporter.exposition import ExpositionRenderer, RenderedExposition
from exporter.logs import log_event
from exporter.loopguard import Pace, RefreshWork, no_pace
from exporter.refresh_stats import REFRESH_STAGES, RefreshStage, RefreshStats
from exporter.views import RenderedViews, ViewsRenderer

logger = logging.getLogger("exporter.refresher")


@dataclass(frozen=True, slots=True)
class Published:
    """What the handlers read: replaced as a whole after every refresh attempt."""

    snapshot: FleetSnapshot | None
    last_success_unix: float | None
    next_refresh_unix: float
    exposition: RenderedExposition
    views: RenderedViews | None
    """The JSON snapshot bodies; ``None`` exactly when ``snapshot`` is."""
    max_staleness_s: float
    """The oldest data that may still be served (``refresh.max_staleness_s``)."""
    replication_lag_s: float = 0.0
    """How far behind its primary the data of ``last_success_unix`` already was."""
    audit_progress: float = 0.0
    """The share of the audit history counted when this was published (1 once counted):
    handlers report this, never the counter's live state, so that ``/readyz`` and
    ``/metrics`` always tell of the same snapshot."""

    @property
    def audit_counted(self) -> bool:
        return self.snapshot is not None and self.snapshot.audit_counted

    def is_stale(self, now_unix: float) -> bool:
        """True before the first success and once the data is too old to serve: its age is
        the time since the last success plus how far the standby read then was behind.

        A handler reads ``published`` once and asks this value, so the snapshot it serves and
        the staleness it judges are those of one refresh."""
        if self.last_success_unix is None:
            return True
        age = now_unix - self.last_success_unix + self.replication_lag_s
        return age > self.max_staleness_s


def _same_figures(
    fleet: ProductFleet,
    product: Product,
    engines_by_status: dict[str, int],
    oldest_provisioning_age_s: float,
    audit: ProductAudit,
    census: ProductCensus,
) -> bool:
    """True when ``fleet`` was built from exactly these figures, which then need no new
    fleet: the audit figures and the census compare by identity (the tally and the census
    hand out the same objects while a product's figures stand), the rest in C. A fleet
    built anew may still equal the previous one (a new census with the same figures); the
    renderers then keep their pieces and take the new object."""
    return (
        fleet.lifetime_by_action is audit.lifetime_by_action
        and fleet.last_hour is audit.last_hour
        and fleet.boot_histogram is audit.boot_histogram
        and fleet.census is census
        and fleet.oldest_provisioning_age_s == oldest_provisioning_age_s
        and fleet.engines_by_status == engines_by_status
        and fleet.product == product
    )


def build_snapshot(
    now: datetime,
    products: list[Product],
    engine_counts: list[queries.EngineCount],
    tally: AuditTally,
    census: EngineCensus | None,
    previous: FleetSnapshot | None,
    *,
    audit_counted: bool,
    pace: Pace = no_pace,
) -> FleetSnapshot:
    """The snapshot of one refresh as of database time ``now``. A product whose figures are
    those of its fleet in ``previous`` keeps that very fleet object (``_same_figures``): no
    new objects for it, and the renderers know it by identity. Equal to what it builds with
    ``previous=None``, whatever ``previous`` was."""
    by_product: dict[str, dict[str, int]] = {p.product_id: {} for p in products}
    oldest_provisioning: dict[str, datetime] = {}
    for row in engine_counts:
        by_product.setdefault(row.product_id, {})[row.status] = row.engines
        if row.oldest_provisioning_at is not None:
            oldest_provisioning[row.product_id] = row.oldest_provisioning_at
    previous_fleets = previous.fleets if previous is not None else {}
    fleets = {}
    for product in products:
        pace()
        product_id = product.product_id
        audit = tally.product_audit(product_id, now)
        oldest = oldest_provisioning.get(product_id)
        oldest_age_s = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        product_census = census.of(product_id) if census else ProductCensus.empty()
        engines_by_status = by_product[product_id]
        fleet = previous_fleets.get(product_id)
        if fleet is None or not _same_figures(
            fleet, product, engines_by_status, oldest_age_s, audit, product_census
        ):
            fleet = ProductFleet(
                product=product,
                engines_by_status=MappingProxyType(engines_by_status),
                oldest_provisioning_age_s=oldest_age_s,
                lifetime_by_action=audit.lifetime_by_action,
                last_hour=audit.last_hour,
                avg_boot_ms=audit.avg_boot_ms,
                boot_histogram=audit.boot_histogram,
                census=product_census,
            )
        fleets[product_id] = fleet
    return FleetSnapshot(
        taken_at=now,
        fleets=MappingProxyType(fleets),
        products_by_key_hash=MappingProxyType(
            {f.product.api_key_hash: f.product for f in fleets.values()}
        ),
        census_taken_at=census.taken_at if census else None,
        audit_counted=audit_counted,
    )


class Refresher:
    """Refreshes on an interval, one refresh at a time, and publishes the result."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        version: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._database = database
        self._settings = settings
        self._version = version
        self._clock = clock
        self._categories = ActionCategories.of(settings.actions)
        self._audit = AuditCounter(settings, self._categories)
        self._census: EngineCensus | None = None
        self._errors: dict[str, int] = dict.fromkeys(REFRESH_STAGES, 0)
        self._lock = asyncio.Lock()
        self._last_duration_s = 0.0
        self._database_up = False
        self._replication_lag_s = 0.0
        self._exposition = ExpositionRenderer()
        self._views = ViewsRenderer(settings.health.critical_failed_ratio, self._categories)
        self._work = RefreshWork()
        self._published = self._publish(no_pace, None, None, None)

    @property
    def published(self) -> Published:
        return self._published

    @property
    def audit(self) -> AuditCounter:
        return self._audit

    @property
    def clock(self) -> Callable[[], float]:
        """The refresher's clock (Unix seconds): the one ``Published.is_stale`` is asked with."""
        return self._clock

    def now(self) -> float:
        """The refresher's clock, read now."""
        return self._clock()

    async def run(self) -> None:
        """Refresh forever; between refreshes, count the history in chunks. A slow refresh
        delays the next one instead of overlapping it. After each refresh one chunk runs,
        then more while the last one's duration still fits before the next refresh is due."""
        interval = self._settings.refresh.interval_s
        while True:
            started = time.monotonic()
            await self.refresh_once()
            due = started + interval
            was_counted = self._audit.counted
            chunk_s = 0.0
            while self._audit.backfilling and time.monotonic() + chunk_s < due:
                chunk_started = time.monotonic()
                if not await self.backfill_once():
                    break
                chunk_s = time.monotonic() - chunk_started
            if self._audit.counted and not was_counted:
                continue
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def refresh_once(self) -> bool:
        async with self._lock:
            started = time.monotonic()
            stage = RefreshStage.CONNECT
            try:
                async with self._database.read_transaction() as tx:
                    snapshot = await queries.fetch_snapshot(tx)
                    stage = RefreshStage.PRODUCTS
                    products = await queries.fetch_products(tx)
                    stage = RefreshStage.ENGINES
                    census_groups: list[EngineGroup] | None = None
                    engine_counts: list[queries.EngineCount] | None = None
                    if self._census_due(snapshot.started_at, products):
                        census_groups = await queries.fetch_engine_census(
                            tx,
                            snapshot.started_at
                            - timedelta(seconds=self._settings.health.probe_overdue_s),
                        )
                    else:
                        engine_counts = await queries.fetch_engine_counts(tx)
                    stage = RefreshStage.AUDIT
                    audit_read = await self._audit.read(tx, snapshot)
            except DatabaseUnavailable as error:
                self._last_duration_s = time.monotonic() - started
                self._errors[stage] += 1
                self._database_up = stage is not RefreshStage.CONNECT and not error.connection_lost
                log_event(
                    logger,
                    logging.WARNING,
                    "refresh_failed",
                    stage=stage,
                    error=str(error),
                    duration_s=round(self._last_duration_s, 3),
                )
                previous = self._published
                self._published = await self._work.run(
                    self._publish,
                    previous.snapshot,
                    previous.last_success_unix,
                    previous.views,
                )
                return False
            first = isinstance(audit_read, FirstRead)
            self._published = await self._work.run(
                self._apply_and_publish,
                audit_read,
                snapshot,
                products,
                engine_counts,
                census_groups,
                started,
            )
            log_event(
                logger,
                logging.INFO if first else logging.DEBUG,
                "refresh_ok",
                products=len(products),
                audit="counted" if self._audit.counted else "backfilling",
                engine_census=census_groups is not None,
                audit_rows=len(audit_read.rows) if isinstance(audit_read, LiveRead) else None,
                pending_audit_ids=self._audit.tracker.pending_ids if self._audit.tracker else 0,
                rendered_products=self._exposition.last_rendered,
                duration_s=round(self._last_duration_s, 3),
                published_after_s=round(time.monotonic() - started, 3),
            )
            await asyncio.to_thread(self._audit.write_checkpoint)
            return True

    async def backfill_once(self) -> bool:
        """Count the next chunk of the history in its own transaction; False when it failed
        (it is tried again, alone, later). Under the refresh lock: the tracker and the tally
        change one reader at a time."""
        async with self._lock:
            chunk = self._audit.next_chunk()
            if chunk is None:
                return True
            started = time.monotonic()
            try:
                async with self._database.read_transaction() as tx:
                    snapshot = await queries.fetch_snapshot(tx)
                    read = await self._audit.read_chunk(tx, snapshot, chunk)
            except DatabaseUnavailable as error:
                self._errors[RefreshStage.BACKFILL] += 1
                self._audit.chunk_failed(chunk, timed_out=not error.connection_lost)
                log_event(
                    logger,
                    logging.WARNING,
                    "backfill_chunk_failed",
                    first_id=chunk.lo,
                    last_id=chunk.hi,
                    error=str(error),
                    duration_s=round(time.monotonic() - started, 3),
                )
                return False
            elapsed_s = time.monotonic() - started
            await self._work.run(lambda _: self._audit.apply_chunk(read, elapsed_s))
            counted = self._audit.counted
            log_event(
                logger,
                logging.INFO if counted else logging.DEBUG,
                "audit_backfill_done" if counted else "backfill_chunk_counted",
                first_id=chunk.lo,
                last_id=chunk.hi,
                progress=round(self._audit.progress, 4),
                duration_s=round(elapsed_s, 3),
            )
            return True

    async def refresh_until_counted(self) -> bool:
        """Refresh, count the whole history and refresh again: the first published snapshot
        with audit totals, at once (tests, benchmarks). False when any step failed."""
        if not await self.refresh_once():
            return False
        while self._audit.backfilling:
            if not await self.backfill_once():
                return False
        return await self.refresh_once()

    def _census_due(self, now: datetime, products: list[Product]) -> bool:
        """A census is due when the last one is old enough, when the database clock went
        back past it (a failover), or when a product has appeared since."""
        census = self._census
        if census is None:
            return True
        elapsed = (now - census.taken_at).total_seconds()
        if not 0 <= elapsed < self._settings.refresh.engine_census_interval_s:
            return True
        return any(product.product_id not in census.products for product in products)

    def _apply_and_publish(
        self,
        pace: Pace,
        audit_read: LiveRead | FirstRead,
        snapshot: DbSnapshot,
        products: list[Product],
        engine_counts: list[queries.EngineCount] | None,
        census_groups: list[EngineGroup] | None,
        started: float,
    ) -> Published:
        """The CPU half of a successful refresh, run off the event loop so that scrapes and
        JSON answers stay quick while a large fleet is counted and rendered (handing the
        GIL to the loop between slices, its survivors kept out of the collector's full
        passes: ``exporter.loopguard``).
        Only the refresher (under its lock) touches this state; handlers read ``published``."""
        self._audit.apply(audit_read, pace)
        if census_groups is not None:
            engine_counts = queries.engine_counts_of(census_groups, pace)
            self._census = engine_census(
                census_groups,
                (product.product_id for product in products),
                snapshot.started_at,
                self._settings.metrics.max_versions,
                pace,
            )
        assert engine_counts is not None, "the counts of a refresh without the census"
        fleet_snapshot = build_snapshot(
            snapshot.started_at,
            products,
            engine_counts,
            self._audit.tally,
            self._census,
            self._published.snapshot,
            audit_counted=self._audit.counted,
            pace=pace,
        )
        views = self._views.render(fleet_snapshot, pace)
        self._last_duration_s = time.monotonic() - started
        self._database_up = True
        self._replication_lag_s = snapshot.replication_lag_s
        return self._publish(pace, fleet_snapshot, self._clock(), views)

    def _publish(
        self,
        pace: Pace,
        snapshot: FleetSnapshot | None,
        last_success_unix: float | None,
        views: RenderedViews | None,
    ) -> Published:
        stats = RefreshStats(
            last_duration_s=self._last_duration_s,
            last_success_unix=last_success_unix,
            errors_by_stage=MappingProxyType(dict(self._errors)),
            database_up=self._database_up,
            audit_progress=self._audit.progress,
            replication_lag_s=self._replication_lag_s,
        )
        exposition = self._exposition.render(
            ExpositionInput(
                snapshot=snapshot,
                stats=stats,
                critical_failed_ratio=self._settings.health.critical_failed_ratio,
                refresh_interval_s=self._settings.refresh.interval_s,
                version=self._version,
            ),
            pace,
        )
        return Published(
            snapshot=snapshot,
            last_success_unix=last_success_unix,
            next_refresh_unix=self._clock() + self._settings.refresh.interval_s,
            exposition=exposition,
            views=views,
            max_staleness_s=self._settings.refresh.max_staleness_s,
            replication_lag_s=self._replication_lag_s,
            audit_progress=stats.audit_progress,
        )
