"""Pure fleet rules: health, ratios, windows, zero-fill, averages, quota, versions, probes."""

from datetime import UTC, datetime, timedelta

import pytest

from exporter.config import ActionSettings
from exporter.domain import (
    DOCUMENTED_ACTIONS,
    ENGINE_STATES,
    ActionCategories,
    BootHistogram,
    EngineGroup,
    EventCategory,
    Health,
    Product,
    ProductCensus,
    ProductFleet,
    average_ms,
    counts_for_labels,
    engine_census,
    failed_ratio,
    fleet_health,
    in_rolling_window,
    probe_age_s,
    quota_from_policy,
    status_counts_for_json,
    versions_for_labels,
)
from exporter.views import metrics_view, status_view

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_health_is_ok_with_no_failed_engine() -> None:
    assert fleet_health(0, 100, 0.10) is Health.OK


def test_health_is_ok_for_an_empty_fleet() -> None:
    assert fleet_health(0, 0, 0.10) is Health.OK


def test_health_is_degraded_just_below_the_ratio() -> None:
    assert fleet_health(9, 100, 0.10) is Health.DEGRADED


def test_status_is_critical_at_ratio_threshold() -> None:
    assert fleet_health(10, 100, 0.10) is Health.CRITICAL


def test_health_is_critical_above_the_ratio() -> None:
    assert fleet_health(11, 100, 0.10) is Health.CRITICAL


def test_health_follows_the_configured_ratio() -> None:
    assert fleet_health(10, 100, 0.5) is Health.DEGRADED
    assert fleet_health(50, 100, 0.5) is Health.CRITICAL


def test_a_single_failed_engine_of_one_is_critical() -> None:
    assert fleet_health(1, 1, 0.10) is Health.CRITICAL


def test_failed_ratio_is_zero_for_an_empty_fleet() -> None:
    assert failed_ratio(0, 0) == 0.0
    assert failed_ratio(1, 4) == 0.25


def test_json_status_counts_have_every_state_and_keep_unknown_ones_by_name() -> None:
    counts = status_counts_for_json({"running": 3, "rebooting": 2})
    assert list(counts)[:6] == list(ENGINE_STATES)
    assert counts == {**dict.fromkeys(ENGINE_STATES, 0), "running": 3, "rebooting": 2}


def test_label_status_counts_fold_unknown_states_into_other() -> None:
    counts = counts_for_labels({"running": 3, "rebooting": 2, "zombie": 1}, ENGINE_STATES)
    assert counts == {**dict.fromkeys(ENGINE_STATES, 0), "running": 3, "other": 3}


def test_label_action_counts_have_every_documented_action_and_fold_the_rest() -> None:
    counts = counts_for_labels({"provision": 4, "boot": 2, "reticulate": 1}, DOCUMENTED_ACTIONS)
    assert set(counts) == {*DOCUMENTED_ACTIONS, "other"}
    assert counts["provision"] == 4
    assert counts["other"] == 3
    assert counts["destroy"] == 0


def test_window_includes_now_and_excludes_exactly_sixty_minutes_ago() -> None:
    assert in_rolling_window(NOW, NOW)
    assert in_rolling_window(NOW - timedelta(minutes=60) + timedelta(microseconds=1), NOW)
    assert not in_rolling_window(NOW - timedelta(minutes=60), NOW)
    assert not in_rolling_window(NOW + timedelta(microseconds=1), NOW)


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], None), ([4000], 4000), ([1, 2], 2), ([1, 1, 2], 1), ([3, 4, 4], 4), ([0, 0], 0)],
)
def test_average_rounds_to_the_nearest_integer_halves_up(
    values: list[int], expected: int | None
) -> None:
    assert average_ms(values) == expected


def _fleet(engines: dict[str, int], lifetime: dict[str, int]) -> ProductFleet:
    return ProductFleet(
        product=Product("p1", "acme", "Acme", "ab" * 32),
        engines_by_status=engines,
        oldest_provisioning_age_s=0.0,
        lifetime_by_action=lifetime,
        last_hour={EventCategory.PROVISION: 3, EventCategory.CRASH: 1},
        avg_boot_ms=None,
        boot_histogram=BootHistogram.empty((1.0,)),
    )


def test_status_view_matches_the_upstream_shape() -> None:
    view = status_view(_fleet({"running": 18, "failed": 2}, {}), 0.10)
    assert view == {
        "total": 20,
        "by_status": {**dict.fromkeys(ENGINE_STATES, 0), "running": 18, "failed": 2},
        "health": "critical",
        "unhealthy_count": 2,
    }


def test_metrics_view_sums_every_configured_action_of_a_category() -> None:
    categories = ActionCategories(
        provision=("provision", "boot"),
        destroy=("destroy",),
        crash=("health_failed",),
        restart=("auto_restart_start",),
    )
    view = metrics_view(_fleet({}, {"provision": 5, "boot": 2, "destroy": 4}), categories)
    assert view == {
        "provisions_1h": 3,
        "crashes_1h": 1,
        "restarts_1h": 0,
        "avg_boot_ms": None,
        "total_provisions": 7,
        "total_destroys": 4,
    }


def test_configured_actions_outside_the_documented_ones_are_tracked_by_name() -> None:
    categories = ActionCategories(("boot",), ("destroy",), ("crash",), ("restart",))
    assert {"boot", "crash", "restart", "provision"} <= categories.tracked_actions
    assert categories.categories_of("boot") == (EventCategory.PROVISION,)


@pytest.mark.parametrize(
    ("max_engines", "quota"),
    [
        (100, 100),
        (1, 1),
        (250.0, 250),
        (10**12, 10**12),
        (None, None),
        (0, None),
        (-5, None),
        (12.5, None),
        ("100", None),
        (True, None),
        (False, None),
        ([100], None),
        ({"value": 100}, None),
        (float("inf"), None),
        (float("nan"), None),
    ],
)
def test_quota_is_a_positive_integer_from_the_policy_or_absent(
    max_engines: object, quota: int | None
) -> None:
    assert quota_from_policy(max_engines) == quota


def test_versions_beyond_the_limit_fold_into_other_largest_first() -> None:
    raw = {"v1": 5, "v2": 9, "v3": 1, "v4": 9, "v5": 2}

    assert versions_for_labels(raw, 2) == {"v2": 9, "v4": 9, "other": 8}
    assert versions_for_labels(raw, 3) == {"v2": 9, "v4": 9, "v1": 5, "other": 3}


def test_ties_at_the_version_limit_go_to_the_lower_name() -> None:
    assert versions_for_labels({"b": 3, "a": 3, "c": 3}, 2) == {"a": 3, "b": 3, "other": 3}


def test_other_is_present_at_zero_when_every_version_fits() -> None:
    assert versions_for_labels({"v1": 4}, 10) == {"v1": 4, "other": 0}
    assert versions_for_labels({}, 10) == {"other": 0}


def test_a_version_named_other_folds_into_other() -> None:
    assert versions_for_labels({"other": 2, "v1": 1}, 10) == {"v1": 1, "other": 2}


def test_probe_age_is_zero_without_a_probe_and_never_negative() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    assert probe_age_s(None, now) == 0.0
    assert probe_age_s(now - timedelta(seconds=42.5), now) == 42.5
    assert probe_age_s(now + timedelta(seconds=3), now) == 0.0


def _group(
    product: str,
    status: str,
    version: str,
    count: int,
    overdue: int = 0,
    oldest_probe_at: datetime | None = None,
) -> EngineGroup:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return EngineGroup(product, status, version, count, created, overdue, oldest_probe_at)


def test_census_counts_probes_of_running_engines_only_and_versions_of_all() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    groups = [
        _group("p1", "running", "v1", 5, overdue=2, oldest_probe_at=now - timedelta(seconds=70)),
        _group("p1", "running", "v2", 3, overdue=1, oldest_probe_at=now - timedelta(seconds=20)),
        _group("p1", "stopped", "v1", 4, overdue=4, oldest_probe_at=now - timedelta(days=3)),
        _group("p1", "failed", "v3", 1, overdue=1, oldest_probe_at=None),
    ]

    census = engine_census(groups, ["p1", "p2"], now, max_versions=10)

    p1 = census.of("p1")
    assert p1.probe_overdue == 3
    assert p1.oldest_probe_age_s == 70.0
    assert dict(p1.engines_by_version) == {"v1": 9, "v2": 3, "v3": 1, "other": 0}
    assert census.of("p2") == ProductCensus(0, 0.0, {"other": 0})
    assert census.taken_at == now


def test_census_of_running_engines_never_probed_is_overdue_without_an_age() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    census = engine_census([_group("p1", "running", "v1", 2, overdue=2)], ["p1"], now, 10)

    assert (census.of("p1").probe_overdue, census.of("p1").oldest_probe_age_s) == (2, 0.0)


def test_action_categories_are_the_action_settings_by_name() -> None:
    settings = ActionSettings(provision=("boot", "provision"), crash=("oom",))
    categories = ActionCategories.of(settings)
    assert categories == ActionCategories(
        provision=("boot", "provision"),
        destroy=("destroy",),
        crash=("oom",),
        restart=("auto_restart_start",),
    )
    assert categories.categories_of("oom") == (EventCategory.CRASH,)
