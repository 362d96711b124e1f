"""The metric catalogue: every family the service exposes, declared once.

Each entry names a family, its help text, labels and how its samples are computed, and its
type says which kind of family it is: a ``FleetFamily`` (gauge or counter) or a
``FleetHistogram`` is fleet data, computed per product from its ``ProductFleet`` and the
``FleetContext`` (so the exposition can keep each product's lines until its figures change)
and dropped when the data is stale; a ``SelfFamily`` is a self-metric, computed from the
``ExpositionInput`` and always served. The help text is the family's meaning alone; whether
the exposed help also says the refresh interval, and how, is the family's ``refreshed`` note.
The exposition renders exactly this list, the README's metric table is generated from it,
and the tests compare both against a real scrape.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

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


class RefreshNote(enum.Enum):
    """How a family's help states the refresh interval, which the exposition fills in."""

    SENTENCE = " Refreshed every {} s."
    """A sentence after the help."""
    ASIDE = " (refreshes run every {} s)"
    """An aside before the help's closing full stop."""


class _Documented:
    """The help text a family is exposed with: its own words plus its refresh note."""

    __slots__ = ()
    name: str
    help: str
    """The family's meaning, as the README's metric table states it."""
    refreshed: RefreshNote | None

    def documentation(self, refresh_interval_s: float) -> str:
        if self.refreshed is None:
            return self.help
        note = self.refreshed.value.format(f"{refresh_interval_s:g}")
        if self.refreshed is RefreshNote.ASIDE:
            return f"{self.help.removesuffix('.')}{note}."
        return self.help + note


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetFamily(_Documented):
    """A fleet gauge or counter: samples per product, dropped once the data is stale."""

    name: str
    """As exposed in the text format; counters end in ``_total``."""
    kind: Literal["gauge", "counter"]
    help: str
    labels: Labels
    samples: Callable[[ProductFleet, FleetContext], Iterable[Sample]]
    """One product's samples."""
    reads: Callable[[ProductFleet], object]
    """The figures of the fleet that ``samples`` reads besides the product's slug, which
    every line carries (and the exposition compares for all families at once): a product's
    lines of this family are kept while these and the ``FleetContext`` compare equal."""
    refreshed: RefreshNote | None = RefreshNote.SENTENCE

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetHistogram(_Documented):
    """A fleet histogram: one histogram per product, dropped once the data is stale."""

    kind: ClassVar[Literal["histogram"]] = "histogram"
    name: str
    help: str
    labels: Labels
    """Without ``le``, which the exposition adds to each bucket."""
    histograms: Callable[[ProductFleet, FleetContext], Iterable[HistogramSample]]
    """One product's histograms."""
    reads: Callable[[ProductFleet], object]
    """As ``FleetFamily.reads``."""
    refreshed: RefreshNote | None = RefreshNote.SENTENCE

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")


@dataclass(frozen=True, slots=True, kw_only=True)
class SelfFamily(_Documented):
    """A self-metric: computed from the whole ``ExpositionInput``, always served."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    labels: Labels
    samples: Callable[[ExpositionInput], Iterable[Sample]]
    refreshed: RefreshNote | None = None

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)


Family = FleetFamily | FleetHistogram | SelfFamily
"""Every family is exactly one of these: which samples it has follows from its type."""


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
    FleetFamily(
        name="engine_fleet_engines",
        kind="gauge",
        help="Engines per status; every state is always present, unknown statuses count as"
        " status=other.",
        labels=("product", "status"),
        samples=_engines,
        reads=lambda fleet: fleet.engines_by_status,
    ),
    FleetFamily(
        name="engine_fleet_health",
        kind="gauge",
        help="Fleet health: 1 for the current state (ok: no failed engine; critical: failed"
        " share at or above the configured ratio; degraded otherwise), 0 for the others.",
        labels=("product", "health"),
        samples=_health,
        reads=lambda fleet: fleet.engines_by_status,
    ),
    FleetFamily(
        name="engine_fleet_failed_ratio",
        kind="gauge",
        help="Failed engines divided by all engines (0 for an empty fleet).",
        labels=("product",),
        samples=_failed_ratio,
        reads=lambda fleet: fleet.engines_by_status,
    ),
    FleetFamily(
        name="engine_fleet_lifecycle_events_total",
        kind="counter",
        help="Audit log rows per action over the whole log, exact; unknown actions count as"
        " action=other.",
        labels=("product", "action"),
        samples=_lifecycle_events,
        reads=lambda fleet: fleet.lifetime_by_action,
    ),
    FleetHistogram(
        name="engine_fleet_boot_duration_seconds",
        help="Boot durations in seconds of provision rows that carry one, over the whole log.",
        labels=("product",),
        histograms=_boot_durations,
        reads=lambda fleet: fleet.boot_histogram,
    ),
    FleetFamily(
        name="engine_fleet_oldest_provisioning_seconds",
        kind="gauge",
        help="Age in seconds of the oldest engine still provisioning (0 when none).",
        labels=("product",),
        samples=_oldest_provisioning,
        reads=lambda fleet: fleet.oldest_provisioning_age_s,
    ),
    FleetFamily(
        name="engine_fleet_engines_probe_overdue",
        kind="gauge",
        help="Running engines never probed or last probed longer ago than health.probe_overdue_s."
        f"{_CENSUS}",
        labels=("product",),
        samples=_probe_overdue,
        reads=lambda fleet: fleet.census.probe_overdue,
        refreshed=None,
    ),
    FleetFamily(
        name="engine_fleet_oldest_probe_age_seconds",
        kind="gauge",
        help="Age in seconds of the oldest health probe among running engines that have one"
        f" (0 when none).{_CENSUS}",
        labels=("product",),
        samples=_oldest_probe_age,
        reads=lambda fleet: fleet.census.oldest_probe_age_s,
        refreshed=None,
    ),
    FleetFamily(
        name="engine_fleet_engines_by_version",
        kind="gauge",
        help="Engines per engine_version, the metrics.max_versions largest by count; the rest"
        f" count as version=other.{_CENSUS}",
        labels=("product", "version"),
        samples=_engines_by_version,
        reads=lambda fleet: fleet.census.engines_by_version,
        refreshed=None,
    ),
    FleetFamily(
        name="engine_fleet_quota_engines",
        kind="gauge",
        help="The product's policy max_engines; absent when its policy sets no positive integer.",
        labels=("product",),
        samples=_quota,
        reads=lambda fleet: fleet.product.quota_engines,
    ),
    SelfFamily(
        name="engine_fleet_exporter_refresh_duration_seconds",
        kind="gauge",
        help="Duration in seconds of the last refresh attempt.",
        labels=(),
        samples=_refresh_duration,
        refreshed=RefreshNote.ASIDE,
    ),
    SelfFamily(
        name="engine_fleet_exporter_last_refresh_success_timestamp_seconds",
        kind="gauge",
        help="Unix time in seconds of the last successful refresh (0 before the first).",
        labels=(),
        samples=_last_success,
    ),
    SelfFamily(
        name="engine_fleet_exporter_refresh_errors_total",
        kind="counter",
        help=f"Failed refreshes by the stage that failed ({_REFRESH_STAGES_OF_A_REFRESH};"
        f" {RefreshStage.BACKFILL}: a chunk of the audit history).",
        labels=("stage",),
        samples=_refresh_errors,
    ),
    SelfFamily(
        name="engine_fleet_exporter_audit_backfill_progress_ratio",
        kind="gauge",
        help="Share of the audit history counted since start, 0..1 (1 once counted); the audit"
        " series are absent below 1.",
        labels=(),
        samples=_backfill_progress,
    ),
    SelfFamily(
        name="engine_fleet_database_replication_lag_seconds",
        kind="gauge",
        help="Seconds the hot standby the exporter reads was behind its primary at the last"
        " successful refresh (0 on a primary); above refresh.max_staleness_s the data is stale.",
        labels=(),
        samples=_replication_lag,
    ),
    SelfFamily(
        name="engine_fleet_database_up",
        kind="gauge",
        help="1 when the last refresh reached the database, else 0.",
        labels=(),
        samples=_database_up,
    ),
    SelfFamily(
        name="engine_fleet_exporter_build_info",
        kind="gauge",
        help="Always 1; the version label carries the exporter version.",
        labels=("version",),
        samples=_build_info,
    ),
)


FLEET_FAMILIES: tuple[FleetFamily | FleetHistogram, ...] = tuple(
    f for f in FAMILIES if isinstance(f, FleetFamily | FleetHistogram)
)
"""The fleet data families, in catalogue order: dropped once the data is stale."""
SELF_FAMILIES: tuple[SelfFamily, ...] = tuple(f for f in FAMILIES if isinstance(f, SelfFamily))
"""The self-metrics, in catalogue order: always served."""


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
        meaning = family.help
        scope = " Self-metric: always served." if isinstance(family, SelfFamily) else ""
        rows.append(f"| `{family.name}` | {family.kind} | {labels} | {meaning}{scope} |")
    rows.extend(selfmetrics.markdown_rows())
    return "\n".join(rows)
