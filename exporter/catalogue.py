"""The metric catalogue: every family the service exposes, declared once.

Each entry names a family, its type, help text, labels, whether it is fleet data (dropped
when the data is stale) or a self-metric (always served), and how its samples are computed:
a fleet family from one product's ``ProductFleet`` and the ``FleetContext`` (so the exposition
can keep each product's lines until its figures change), a self-metric from the
``ExpositionInput``. The exposition renders exactly this list, the README's metric table is
generated from it, and the tests compare both against a real scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from exporter import selfmetrics
from exporter.domain import (
    DOCUMENTED_ACTIONS,
    ENGINE_STATES,
    BootHistogram,
    FleetSnapshot,
    ProductFleet,
    counts_for_labels,
    failed_ratio,
    fleet_health,
)
from exporter.domain import Health as HealthState
from exporter.refresh_stats import REFRESH_STAGES, RefreshStage, RefreshStats

_REFRESH_STAGES_OF_A_REFRESH = ", ".join(
    s for s in REFRESH_STAGES if s is not RefreshStage.BACKFILL
)
_CENSUS = " Counted from every engine row once per refresh.engine_census_interval_s."


@dataclass(frozen=True, slots=True)
class FleetContext:
    """Everything a fleet family reads besides the product's own figures.

    A product's rendered lines are reused while its ``ProductFleet`` and this context are
    equal, so any other input a fleet family starts to depend on belongs here.
    """

    critical_failed_ratio: float
    audit_counted: bool
    """The audit history is counted: until then the audit families have no samples."""


@dataclass(frozen=True, slots=True)
class ExpositionInput:
    snapshot: FleetSnapshot | None
    stats: RefreshStats
    critical_failed_ratio: float
    refresh_interval_s: float
    version: str

    @property
    def fleet_context(self) -> FleetContext:
        return FleetContext(
            critical_failed_ratio=self.critical_failed_ratio,
            audit_counted=self.snapshot is not None and self.snapshot.audit_counted,
        )


Labels = tuple[str, ...]
Sample = tuple[Labels, float]
HistogramSample = tuple[Labels, BootHistogram]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    """As exposed in the text format; counters end in ``_total``."""
    kind: Literal["gauge", "counter", "histogram"]
    help: str
    """May use ``{interval}``: the refresh interval in seconds."""
    labels: Labels
    fleet_data: bool
    """Fleet data is dropped once stale; self-metrics are always served."""
    samples: Callable[[ExpositionInput], Iterable[Sample]] | None = None
    """A self-metric's samples."""
    product_samples: Callable[[ProductFleet, FleetContext], Iterable[Sample]] | None = None
    """A fleet gauge's or counter's samples for one product."""
    product_histograms: Callable[[ProductFleet, FleetContext], Iterable[HistogramSample]] | None = (
        None
    )
    """A fleet histogram's samples for one product."""

    @property
    def sample_names(self) -> tuple[str, ...]:
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


def _engines(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    for status, count in counts_for_labels(fleet.engines_by_status, ENGINE_STATES).items():
        yield (fleet.product.slug, status), count


def _health(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    current = fleet_health(fleet.failed, fleet.total, context.critical_failed_ratio)
    for state in HealthState:
        yield (fleet.product.slug, state.value), 1.0 if state is current else 0.0


def _failed_ratio(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    yield (fleet.product.slug,), failed_ratio(fleet.failed, fleet.total)


def _lifecycle_events(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    if not context.audit_counted:
        return
    for action, count in counts_for_labels(fleet.lifetime_by_action, DOCUMENTED_ACTIONS).items():
        yield (fleet.product.slug, action), count


def _boot_durations(fleet: ProductFleet, context: FleetContext) -> Iterable[HistogramSample]:
    if context.audit_counted:
        yield (fleet.product.slug,), fleet.boot_histogram


def _oldest_provisioning(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    yield (fleet.product.slug,), fleet.oldest_provisioning_age_s


def _probe_overdue(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    yield (fleet.product.slug,), fleet.census.probe_overdue


def _oldest_probe_age(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    yield (fleet.product.slug,), fleet.census.oldest_probe_age_s


def _engines_by_version(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    for version, count in fleet.census.engines_by_version.items():
        yield (fleet.product.slug, version), count


def _quota(fleet: ProductFleet, context: FleetContext) -> Iterable[Sample]:
    if fleet.product.quota_engines is not None:
        yield (fleet.product.slug,), fleet.product.quota_engines


def _refresh_duration(data: ExpositionInput) -> Iterable[Sample]:
    yield (), data.stats.last_duration_s


def _last_success(data: ExpositionInput) -> Iterable[Sample]:
    yield (), data.stats.last_success_unix or 0.0


def _refresh_errors(data: ExpositionInput) -> Iterable[Sample]:
    for stage in REFRESH_STAGES:
        yield (stage.value,), data.stats.errors_by_stage.get(stage, 0)


def _backfill_progress(data: ExpositionInput) -> Iterable[Sample]:
    yield (), data.stats.audit_progress


def _replication_lag(data: ExpositionInput) -> Iterable[Sample]:
    yield (), data.stats.replication_lag_s


def _database_up(data: ExpositionInput) -> Iterable[Sample]:
    yield (), 1.0 if data.stats.database_up else 0.0


def _build_info(data: ExpositionInput) -> Iterable[Sample]:
    yield (data.version,), 1.0


FAMILIES: tuple[Family, ...] = (
    Family(
        "engine_fleet_engines",
        "gauge",
        "Engines per status; every state is always present, unknown statuses count as"
        " status=other. Refreshed every {interval} s.",
        ("product", "status"),
        fleet_data=True,
        product_samples=_engines,
    ),
    Family(
        "engine_fleet_health",
        "gauge",
        "Fleet health: 1 for the current state (ok: no failed engine; critical: failed share at"
        " or above the configured ratio; degraded otherwise), 0 for the others."
        " Refreshed every {interval} s.",
        ("product", "health"),
        fleet_data=True,
        product_samples=_health,
    ),
    Family(
        "engine_fleet_failed_ratio",
        "gauge",
        "Failed engines divided by all engines (0 for an empty fleet)."
        " Refreshed every {interval} s.",
        ("product",),
        fleet_data=True,
        product_samples=_failed_ratio,
    ),
    Family(
        "engine_fleet_lifecycle_events_total",
        "counter",
        "Audit log rows per action over the whole log, exact; unknown actions count as"
        " action=other. Refreshed every {interval} s.",
        ("product", "action"),
        fleet_data=True,
        product_samples=_lifecycle_events,
    ),
    Family(
        "engine_fleet_boot_duration_seconds",
        "histogram",
        "Boot durations in seconds of provision rows that carry one, over the whole log."
        " Refreshed every {interval} s.",
        ("product",),
        fleet_data=True,
        product_histograms=_boot_durations,
    ),
    Family(
        "engine_fleet_oldest_provisioning_seconds",
        "gauge",
        "Age in seconds of the oldest engine still provisioning (0 when none)."
        " Refreshed every {interval} s.",
        ("product",),
        fleet_data=True,
        product_samples=_oldest_provisioning,
    ),
    Family(
        "engine_fleet_engines_probe_overdue",
        "gauge",
        "Running engines never probed or last probed longer ago than health.probe_overdue_s."
        f"{_CENSUS}",
        ("product",),
        fleet_data=True,
        product_samples=_probe_overdue,
    ),
    Family(
        "engine_fleet_oldest_probe_age_seconds",
        "gauge",
        "Age in seconds of the oldest health probe among running engines that have one"
        f" (0 when none).{_CENSUS}",
        ("product",),
        fleet_data=True,
        product_samples=_oldest_probe_age,
    ),
    Family(
        "engine_fleet_engines_by_version",
        "gauge",
        "Engines per engine_version, the metrics.max_versions largest by count; the rest"
        f" count as version=other.{_CENSUS}",
        ("product", "version"),
        fleet_data=True,
        product_samples=_engines_by_version,
    ),
    Family(
        "engine_fleet_quota_engines",
        "gauge",
        "The product's policy max_engines; absent when its policy sets no positive integer."
        " Refreshed every {interval} s.",
        ("product",),
        fleet_data=True,
        product_samples=_quota,
    ),
    Family(
        "engine_fleet_exporter_refresh_duration_seconds",
        "gauge",
        "Duration in seconds of the last refresh attempt (refreshes run every {interval} s).",
        (),
        fleet_data=False,
        samples=_refresh_duration,
    ),
    Family(
        "engine_fleet_exporter_last_refresh_success_timestamp_seconds",
        "gauge",
        "Unix time in seconds of the last successful refresh (0 before the first).",
        (),
        fleet_data=False,
        samples=_last_success,
    ),
    Family(
        "engine_fleet_exporter_refresh_errors_total",
        "counter",
        f"Failed refreshes by the stage that failed ({_REFRESH_STAGES_OF_A_REFRESH};"
        f" {RefreshStage.BACKFILL}: a chunk of the audit history).",
        ("stage",),
        fleet_data=False,
        samples=_refresh_errors,
    ),
    Family(
        "engine_fleet_exporter_audit_backfill_progress_ratio",
        "gauge",
        "Share of the audit history counted since start, 0..1 (1 once counted); the audit"
        " series are absent below 1.",
        (),
        fleet_data=False,
        samples=_backfill_progress,
    ),
    Family(
        "engine_fleet_database_replication_lag_seconds",
        "gauge",
        "Seconds the hot standby the exporter reads was behind its primary at the last"
        " successful refresh (0 on a primary); above refresh.max_staleness_s the data is stale.",
        (),
        fleet_data=False,
        samples=_replication_lag,
    ),
    Family(
        "engine_fleet_database_up",
        "gauge",
        "1 when the last refresh reached the database, else 0.",
        (),
        fleet_data=False,
        samples=_database_up,
    ),
    Family(
        "engine_fleet_exporter_build_info",
        "gauge",
        "Always 1; the version label carries the exporter version.",
        ("version",),
        fleet_data=False,
        samples=_build_info,
    ),
)


def exposed_sample_names() -> frozenset[str]:
    """Every sample name a scrape can carry (histograms as _bucket, _sum and _count)."""
    return frozenset(name for family in FAMILIES for name in family.sample_names)


def markdown_table() -> str:
    """The README's metric table, generated so the documentation cannot drift."""
    rows = [
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for family in FAMILIES:
        labels = ", ".join(family.labels) or "—"
        meaning = family.help.replace(" Refreshed every {interval} s.", "").replace(
            " (refreshes run every {interval} s)", ""
        )
        scope = "" if family.fleet_data else " Self-metric: always served."
        rows.append(f"| `{family.name}` | {family.kind} | {labels} | {meaning}{scope} |")
    rows.extend(selfmetrics.markdown_rows())
    return "\n".join(rows)
