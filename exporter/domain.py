"""Fleet domain rules: the pure part of the service.

Everything here is a plain function or a frozen value over plain values: health rules, the
rolling window, zero-fill of states and actions, averages and ratios, and the immutable
``FleetSnapshot`` that the refresher builds and the JSON handlers and the Prometheus
exposition read. No I/O, no clocks, no event loop: the refresher passes times in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

ENGINE_STATES: tuple[str, ...] = (
    "provisioning",
    "running",
    "sleeping",
    "stopped",
    "failed",
    "destroying",
)

ENGINE_LISTING_FIELDS: tuple[str, ...] = (
    "engine_id",
    "user_id",
    "status",
    "url",
    "engine_version",
    "created_at",
    "last_health_at",
)
"""What ``GET /engines`` shows of an engine: never its key hash or encrypted key."""

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


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    slug: str
    display_name: str
    api_key_hash: str
    """SHA-256 hex of the platform key, lower case."""


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


@dataclass(frozen=True, slots=True)
class ActionCategories:
    """Which raw audit actions count as each JSON ``/metrics`` category (from configuration)."""

    provision: tuple[str, ...]
    destroy: tuple[str, ...]
    crash: tuple[str, ...]
    restart: tuple[str, ...]

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


def status_view(fleet: ProductFleet, critical_failed_ratio: float) -> dict[str, object]:
    """The JSON body of ``GET /status``."""
    return {
        "total": fleet.total,
        "by_status": status_counts_for_json(fleet.engines_by_status),
        "health": fleet_health(fleet.failed, fleet.total, critical_failed_ratio).value,
        "unhealthy_count": fleet.failed,
    }


def metrics_view(fleet: ProductFleet, categories: ActionCategories) -> dict[str, object]:
    """The JSON body of ``GET /metrics``."""
    return {
        "provisions_1h": fleet.last_hour.get(EventCategory.PROVISION, 0),
        "crashes_1h": fleet.last_hour.get(EventCategory.CRASH, 0),
        "restarts_1h": fleet.last_hour.get(EventCategory.RESTART, 0),
        "avg_boot_ms": fleet.avg_boot_ms,
        "total_provisions": categories.lifetime_total(
            EventCategory.PROVISION, fleet.lifetime_by_action
        ),
        "total_destroys": categories.lifetime_total(
            EventCategory.DESTROY, fleet.lifetime_by_action
        ),
    }
