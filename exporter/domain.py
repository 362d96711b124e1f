"""Fleet domain rules: the pure part of the service.

Everything here is a plain function or a frozen value over plain values: health rules, the
rolling window, zero-fill of states and actions, averages and ratios, and the immutable
``FleetSnapshot`` that the refresher builds and the JSON handlers and the Prometheus
exposition read. No I/O, no clocks, no event loop: the refresher passes times in.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Self

from exporter.loopguard import Pace, no_pace, paced

if TYPE_CHECKING:
    from exporter.config import ActionSettings

ENGINE_STATES: tuple[str, ...] = (
    "provisioning",
    "running",
    "sleeping",
    "stopped",
    "failed",
    "destroying",
)


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """What ``GET /engines`` shows of an engine: never its key hash or encrypted key.

    The one declaration of the listing: its fields, in this order, are the columns the page
    statements select, the members of each JSON engine and the properties of the OpenAPI
    ``Engine`` schema (a field's ``format`` metadata is its JSON string format)."""

    engine_id: str = field(metadata={"format": "uuid"})
    user_id: str
    status: str
    url: str | None
    engine_version: str
    created_at: datetime
    last_health_at: datetime | None


ENGINE_LISTING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EngineRecord))

DOCUMENTED_ACTIONS: tuple[str, ...] = (
    "provision",
    "start",
    "stop",
    "wake",
    "destroy",
    "rotate_key",
    "health_check",
    "health_failed",
    "auto_restart_start",
    "auto_restart_success",
    "auto_restart_failed",
    "auto_restart_gave_up",
    "policy_register",
    "policy_update",
    "admit_denied",
)

OTHER = "other"
"""Label value that unknown statuses and actions fold into, so label sets stay bounded."""

ROLLING_WINDOW = timedelta(hours=1)


class Health(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    CRITICAL = "critical"


class EventCategory(enum.StrEnum):
    """The audit categories the JSON ``/metrics`` counts; each maps to configured actions."""

    PROVISION = "provision"
    DESTROY = "destroy"
    CRASH = "crash"
    RESTART = "restart"


def failed_ratio(failed: int, total: int) -> float:
    """Share of engines in ``failed``; 0 for an empty fleet (nothing is failing)."""
    return failed / total if total > 0 else 0.0


def fleet_health(failed: int, total: int, critical_failed_ratio: float) -> Health:
    """ok with no failed engine, critical at or above the ratio, degraded in between."""
    if failed <= 0:
        return Health.OK
    if failed_ratio(failed, total) >= critical_failed_ratio:
        return Health.CRITICAL
    return Health.DEGRADED


def status_counts_for_json(raw: Mapping[str, int]) -> dict[str, int]:
    """All six states (zero included) plus any other status under its own name."""
    counts = dict.fromkeys(ENGINE_STATES, 0)
    for status, count in sorted(raw.items()):
        counts[status] = counts.get(status, 0) + count
    return counts


def counts_for_labels(raw: Mapping[str, int], known: tuple[str, ...]) -> dict[str, int]:
    """Every known value (zero included) in its order, then ``other``, which holds the counts
    of every value not known: a label's values stay a fixed, bounded set."""
    counts = dict.fromkeys((*known, OTHER), 0)
    for value, count in raw.items():
        counts[value if value in known else OTHER] += count
    return counts


def in_rolling_window(
    timestamp: datetime, now: datetime, window: timedelta = ROLLING_WINDOW
) -> bool:
    """True when ``now - window < timestamp <= now``: a row exactly one window old is out."""
    return now - window < timestamp <= now


def average_ms(durations: Iterable[int]) -> int | None:
    """Mean rounded to the nearest integer, halves away from zero; None for no values."""
    values = list(durations)
    if not values:
        return None
    total, count = sum(values), len(values)
    quotient, remainder = divmod(abs(total), count)
    rounded = quotient + (1 if 2 * remainder >= count else 0)
    return rounded if total >= 0 else -rounded


def quota_from_policy(max_engines: object) -> int | None:
    """The product's engine quota from its policy's ``max_engines`` (decoded JSON), or None
    when the policy sets none: a missing key, null, a string, a boolean, a fraction, zero or a
    negative number. An integral JSON number such as ``100.0`` is the integer it names."""
    if isinstance(max_engines, bool):
        return None
    if isinstance(max_engines, int):
        return max_engines if max_engines > 0 else None
    if isinstance(max_engines, float) and math.isfinite(max_engines) and max_engines > 0:
        return int(max_engines) if max_engines.is_integer() else None
    return None


def versions_for_labels(raw: Mapping[str, int], max_versions: int) -> dict[str, int]:
    """The ``max_versions`` versions with the most engines under their own name (ties go to
    the lower name, so the choice is stable between refreshes); every other version is
    folded into ``other``, which is always present. A version literally named ``other``
    folds in too, so the label means one thing."""
    largest = sorted(
        (version for version, count in raw.items() if version != OTHER and count > 0),
        key=lambda version: (-raw[version], version),
    )
    return counts_for_labels(raw, tuple(largest[:max_versions]))


def probe_age_s(oldest_probe_at: datetime | None, now: datetime) -> float:
    """Seconds since the oldest probe; 0 when no engine has been probed (or for a probe
    stamped after ``now`` by a clock ahead of the database's)."""
    if oldest_probe_at is None:
        return 0.0
    return max(0.0, (now - oldest_probe_at).total_seconds())


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    slug: str
    display_name: str
    api_key_hash: str
    """SHA-256 hex of the platform key, lower case."""
    quota_engines: int | None = None
    """``policy.max_engines``; None when the policy sets no usable quota."""


@dataclass(frozen=True, slots=True)
class EngineGroup:
    """One row of the engine census: a product's engines sharing a status and a version."""

    product_id: str
    status: str
    version: str
    count: int
    oldest_created_at: datetime
    probe_overdue: int
    """Engines of the group never probed or last probed before the overdue limit."""
    oldest_probe_at: datetime | None
    """The oldest non-null ``last_health_at`` of the group."""


@dataclass(frozen=True, slots=True)
class ProductCensus:
    """What the engine census says about one product's fleet."""

    probe_overdue: int
    oldest_probe_age_s: float
    engines_by_version: Mapping[str, int]
    """Folded to at most ``metrics.max_versions`` names plus ``other``."""

    @classmethod
    def empty(cls) -> ProductCensus:
        """The figures of a product no census has seen: always the same object, so that a
        fleet built with it is known unchanged by identity."""
        return _EMPTY_CENSUS


_EMPTY_CENSUS = ProductCensus(0, 0.0, MappingProxyType({OTHER: 0}))


@dataclass(frozen=True, slots=True)
class EngineCensus:
    """The figures only a read of every engine row gives, taken less often than the counts."""

    taken_at: datetime
    """Database time of the refresh that read the rows; overdue and ages are as of then."""
    products: Mapping[str, ProductCensus]
    """By product id: every product that existed then, with or without engines."""

    def of(self, product_id: str) -> ProductCensus:
        return self.products.get(product_id) or ProductCensus.empty()


def engine_census(
    groups: Sequence[EngineGroup],
    product_ids: Iterable[str],
    taken_at: datetime,
    max_versions: int,
    pace: Pace = no_pace,
) -> EngineCensus:
    """Fold census rows into per-product figures. Probe figures count ``running`` engines
    only: the orchestrator's health loop probes nothing else."""
    versions: dict[str, dict[str, int]] = {pid: {} for pid in product_ids}
    overdue: dict[str, int] = {}
    oldest_probe: dict[str, datetime] = {}
    for group in groups:
        pace()
        by_version = versions.setdefault(group.product_id, {})
        by_version[group.version] = by_version.get(group.version, 0) + group.count
        if group.status != "running":
            continue
        overdue[group.product_id] = overdue.get(group.product_id, 0) + group.probe_overdue
        probed = group.oldest_probe_at
        known = oldest_probe.get(group.product_id)
        if probed is not None and (known is None or probed < known):
            oldest_probe[group.product_id] = probed
    return EngineCensus(
        taken_at=taken_at,
        products=MappingProxyType(
            {
                pid: ProductCensus(
                    probe_overdue=overdue.get(pid, 0),
                    oldest_probe_age_s=probe_age_s(oldest_probe.get(pid), taken_at),
                    engines_by_version=MappingProxyType(
                        versions_for_labels(by_version, max_versions)
                    ),
                )
                for pid, by_version in paced(versions.items(), pace)
            }
        ),
    )


@dataclass(frozen=True, slots=True)
class BootHistogram:
    """Boot durations in seconds against fixed upper bounds (cumulative, Prometheus style)."""

    upper_bounds_s: tuple[float, ...]
    cumulative_counts: tuple[int, ...]
    """One per upper bound, then one for +Inf (equal to ``count``)."""
    sum_s: float
    count: int

    @classmethod
    def empty(cls, upper_bounds_s: tuple[float, ...]) -> BootHistogram:
        return cls(upper_bounds_s, (0,) * (len(upper_bounds_s) + 1), 0.0, 0)


@dataclass(frozen=True, slots=True)
class ProductFleet:
    """Everything the service knows about one product's fleet at one snapshot."""

    product: Product
    engines_by_status: Mapping[str, int]
    """Raw status values as found in the engines table."""
    oldest_provisioning_age_s: float
    lifetime_by_action: Mapping[str, int]
    """Lifetime audit rows per action: documented and configured ones by name, the rest as other."""
    last_hour: Mapping[EventCategory, int]
    avg_boot_ms: int | None
    boot_histogram: BootHistogram
    census: ProductCensus = field(default_factory=ProductCensus.empty)
    """Versions and probe figures as of the latest census (``FleetSnapshot.census_taken_at``)."""

    @property
    def total(self) -> int:
        return sum(self.engines_by_status.values())

    @property
    def failed(self) -> int:
        return self.engines_by_status.get("failed", 0)

    def engines_matching(self, status: str | None) -> int:
        """How many engines ``GET /engines`` with this ``status`` filter lists in all."""
        return self.total if status is None else self.engines_by_status.get(status, 0)


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """One consistent view of every product, taken from a single database snapshot."""

    taken_at: datetime
    """Database time of the refresh transaction; the rolling window ends here."""
    fleets: Mapping[str, ProductFleet]
    """By product id."""
    products_by_key_hash: Mapping[str, Product] = field(
        default_factory=lambda: MappingProxyType({})
    )
    census_taken_at: datetime | None = None
    """When the engine census behind each fleet's ``census`` was taken (database time)."""
    audit_counted: bool = False
    """The whole audit log is counted; until then the audit figures are partial and are not
    shown (``/metrics`` answers 503, the audit-derived series are absent)."""

    def lifetime_counts(self) -> dict[tuple[str, str], int]:
        """The non-zero lifetime counts by product id and action (``other`` for the actions
        not tracked by name): what ``count(*)`` over the audit log is checked against."""
        return {
            (product_id, action): count
            for product_id, fleet in self.fleets.items()
            for action, count in fleet.lifetime_by_action.items()
            if count
        }


@dataclass(frozen=True, slots=True)
class ActionCategories:
    """Which raw audit actions count as each JSON ``/metrics`` category (from configuration)."""

    provision: tuple[str, ...]
    destroy: tuple[str, ...]
    crash: tuple[str, ...]
    restart: tuple[str, ...]

    @classmethod
    def of(cls, settings: ActionSettings) -> Self:
        """The categories the ``actions`` settings name: one field per category, by name."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def actions(self, category: EventCategory) -> tuple[str, ...]:
        return {
            EventCategory.PROVISION: self.provision,
            EventCategory.DESTROY: self.destroy,
            EventCategory.CRASH: self.crash,
            EventCategory.RESTART: self.restart,
        }[category]

    def categories_of(self, action: str) -> tuple[EventCategory, ...]:
        return tuple(c for c in EventCategory if action in self.actions(c))

    @property
    def tracked_actions(self) -> frozenset[str]:
        """Actions counted under their own name: the documented ones and every configured one."""
        return frozenset(DOCUMENTED_ACTIONS).union(
            self.provision, self.destroy, self.crash, self.restart
        )

    def lifetime_total(self, category: EventCategory, lifetime: Mapping[str, int]) -> int:
        return sum(lifetime.get(action, 0) for action in self.actions(category))
