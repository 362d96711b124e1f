"""Pure fleet rules: health, ratios, windows, zero-fill, averages."""

from datetime import UTC, datetime, timedelta

import pytest

from exporter.domain import (
    DOCUMENTED_ACTIONS,
    ENGINE_STATES,
    ActionCategories,
    BootHistogram,
    EventCategory,
    Health,
    Product,
    ProductFleet,
    average_ms,
    counts_for_labels,
    failed_ratio,
    fleet_health,
    in_rolling_window,
    metrics_view,
    status_counts_for_json,
    status_view,
)

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
