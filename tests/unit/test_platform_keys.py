"""Platform keys: a key finds its product's fleet in the snapshot served, and the memo of keys
that matched changes no answer (a new snapshot forgets them, failures are never kept)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from exporter.domain import BootHistogram, FleetSnapshot, Product, ProductFleet
from exporter.errors import ApiError
from exporter.platform_keys import MAX_PLATFORM_KEY_LENGTH, PlatformKeys

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _fleet(product_id: str, key: str) -> ProductFleet:
    return ProductFleet(
        product=Product(
            product_id, product_id, product_id, hashlib.sha256(key.encode()).hexdigest()
        ),
        engines_by_status=MappingProxyType({"running": 1}),
        oldest_provisioning_age_s=0.0,
        lifetime_by_action=MappingProxyType({}),
        last_hour=MappingProxyType({}),
        avg_boot_ms=None,
        boot_histogram=BootHistogram((1.0,), (0, 0), 0.0, 0),
    )


def _snapshot(**keys: str) -> FleetSnapshot:
    """A snapshot with one product per ``product_id=key``."""
    fleets = [_fleet(product_id, key) for product_id, key in keys.items()]
    return FleetSnapshot(
        NOW,
        MappingProxyType({fleet.product.product_id: fleet for fleet in fleets}),
        MappingProxyType({fleet.product.api_key_hash: fleet.product for fleet in fleets}),
    )


def _refused(keys: PlatformKeys, sent: list[str], snapshot: FleetSnapshot | None) -> ApiError:
    with pytest.raises(ApiError) as refused:
        keys.fleet(sent, snapshot)
    return refused.value


def test_a_key_finds_its_products_fleet_in_the_snapshot_given() -> None:
    snapshot = _snapshot(alpha="key-a", beta="key-b")
    keys = PlatformKeys()
    assert keys.fleet(["key-b"], snapshot) is snapshot.fleets["beta"]
    assert keys.fleet(["key-a"], snapshot) is snapshot.fleets["alpha"]
    assert keys.fleet(["key-b"], snapshot) is snapshot.fleets["beta"]


@pytest.mark.parametrize(
    "sent",
    [
        [],
        ["key-a", "key-a"],
        ["key-a", "other"],
        [""],
        ["unknown"],
        ["k" * (MAX_PLATFORM_KEY_LENGTH + 1)],
    ],
    ids=["none", "repeated", "two", "empty", "unknown", "too-long"],
)
def test_missing_repeated_unknown_or_oversized_keys_are_401(sent: list[str]) -> None:
    snapshot = _snapshot(alpha="key-a")
    keys = PlatformKeys()
    keys.fleet(["key-a"], snapshot)
    error = _refused(keys, sent, snapshot)
    assert (error.status, error.code) == (401, "INVALID_PLATFORM_KEY")


def test_a_remembered_key_sent_twice_is_still_refused() -> None:
    snapshot = _snapshot(alpha="key-a")
    keys = PlatformKeys()
    keys.fleet(["key-a"], snapshot)
    assert _refused(keys, ["key-a", "key-a"], snapshot).status == 401


def test_before_the_first_refresh_a_key_is_answered_503_not_401() -> None:
    error = _refused(PlatformKeys(), ["key-a"], None)
    assert (error.status, error.code) == (503, "FLEET_DATA_UNAVAILABLE")


def test_a_key_dropped_by_the_next_snapshot_stops_working_with_it() -> None:
    keys = PlatformKeys()
    keys.fleet(["key-a"], _snapshot(alpha="key-a"))
    rotated = _snapshot(alpha="key-a2")
    assert _refused(keys, ["key-a"], rotated).status == 401
    assert keys.fleet(["key-a2"], rotated) is rotated.fleets["alpha"]


def test_the_fleet_comes_from_the_snapshot_served_not_the_one_remembered() -> None:
    keys = PlatformKeys()
    first, second = _snapshot(alpha="key-a"), _snapshot(alpha="key-a")
    assert keys.fleet(["key-a"], first) is first.fleets["alpha"]
    assert keys.fleet(["key-a"], second) is second.fleets["alpha"]
    assert keys.fleet(["key-a"], first) is first.fleets["alpha"]


def test_only_keys_that_matched_are_remembered_at_most_one_per_product() -> None:
    snapshot = _snapshot(alpha="key-a", beta="key-b")
    keys = PlatformKeys()
    for attempt in range(100):
        _refused(keys, [f"guess-{attempt}"], snapshot)
    for _ in range(3):
        keys.fleet(["key-a"], snapshot)
        keys.fleet(["key-b"], snapshot)
    assert keys.remembered == 2
