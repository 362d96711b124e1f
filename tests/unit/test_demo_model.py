"""The demo fleet's pure model and seed plan: documented lifecycle, restart rules, incidents."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from exporter.demo.model import (
    ALLOWED_TRANSITIONS,
    DEMO_PRODUCTS,
    ENGINE_VERSION,
    MAX_RESTART_ATTEMPTS,
    PREVIOUS_ENGINE_VERSION,
    PROBE_INTERVAL_S,
    ROLLOUT_ENGINE_VERSION,
    AppendAudit,
    AuditEntry,
    ChangeStatus,
    DeleteEngine,
    FleetModel,
    InsertEngine,
    LoadedEngine,
    RecordHealth,
    RestartProgress,
    RotateKey,
    SimulationRates,
    Write,
    restart_backoff_s,
    restart_progress,
)
from exporter.demo.seed import NEAR_QUOTA_SLUG, final_statuses, plan_demo_fleet, split_counts
from exporter.domain import ENGINE_STATES

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ACME, GLOBEX, INITECH = DEMO_PRODUCTS
QUIET = SimulationRates(
    provisions_per_s=0,
    destroys_per_s=0,
    crash_per_engine_per_s=0,
    sleep_per_engine_per_s=0,
    wake_per_engine_per_s=0,
    stop_per_engine_per_s=0,
    start_per_engine_per_s=0,
    rotate_key_per_engine_per_s=0,
    admit_denied_per_s=0,
    boot_failure_prob=0,
)
BUSY = SimulationRates(
    provisions_per_s=2,
    destroys_per_s=2,
    crash_per_engine_per_s=0.005,
    sleep_per_engine_per_s=0.01,
    wake_per_engine_per_s=0.05,
    stop_per_engine_per_s=0.005,
    start_per_engine_per_s=0.05,
    rotate_key_per_engine_per_s=0.001,
    admit_denied_per_s=0.5,
    boot_failure_prob=0.2,
    restart_success_prob=0.5,
    failed_cleanup_s=30,
)


def fleet(counts: dict[str, int], status: str = "running") -> list[LoadedEngine]:
    by_slug = {p.slug: p for p in DEMO_PRODUCTS}
    return [
        LoadedEngine(f"{slug}-{i}", by_slug[slug].product_id, f"user-{i}", status, T0)
        for slug, n in counts.items()
        for i in range(n)
    ]


def model(
    engines: Sequence[LoadedEngine] = (),
    *,
    rates: SimulationRates = QUIET,
    seed: int = 1,
    progress: dict[str, RestartProgress] | None = None,
) -> FleetModel:
    fleet_model = FleetModel(DEMO_PRODUCTS, rates=rates, rng=random.Random(seed))
    fleet_model.load(engines, progress or {}, T0)
    return fleet_model


def run(fleet_model: FleetModel, seconds: float, dt_s: float = 1.0) -> list[Write]:
    writes: list[Write] = []
    for _ in range(round(seconds / dt_s)):
        writes += fleet_model.step(dt_s, T0 + timedelta(seconds=fleet_model.clock_s + dt_s))
    return writes


def audit_rows(writes: Sequence[Write]) -> list[AuditEntry]:
    rows: list[AuditEntry] = []
    for write in writes:
        if isinstance(write, ChangeStatus | RecordHealth | AppendAudit):
            rows += write.audit
        elif isinstance(write, RotateKey):
            rows.append(write.audit)
    return rows


def failed_ratio(fleet_model: FleetModel, slug: str) -> float:
    counts = fleet_model.status_counts(slug)
    return counts["failed"] / max(sum(counts.values()), 1)


def test_restart_backoff_doubles_from_5_s_to_a_300_s_cap() -> None:
    backoffs = [restart_backoff_s(n) for n in range(MAX_RESTART_ATTEMPTS)]
    assert backoffs == [5, 10, 20, 40, 80, 160, 300, 300]


def test_every_write_follows_the_documented_lifecycle() -> None:
    fleet_model = model(fleet({"acme": 30, "globex": 20, "initech": 10}), rates=BUSY, seed=3)
    states = dict.fromkeys(fleet_model.engines, "running")
    writes = run(fleet_model, 900)
    for write in writes:
        if isinstance(write, InsertEngine):
            assert write.row.engine_id not in states
            assert write.row.status == "provisioning"
            states[write.row.engine_id] = "provisioning"
        elif isinstance(write, ChangeStatus):
            assert write.from_status == states[write.engine_id]
            assert (write.from_status, write.to_status) in ALLOWED_TRANSITIONS
            states[write.engine_id] = write.to_status
        elif isinstance(write, DeleteEngine):
            assert states.pop(write.engine_id) == "destroying"
        elif isinstance(write, RecordHealth):
            assert all(states[engine_id] == "running" for engine_id in write.engine_ids)
    seen = Counter((w.from_status, w.to_status) for w in writes if isinstance(w, ChangeStatus))
    never_destroyed_while_booting = {("provisioning", "destroying")}
    assert set(seen) == ALLOWED_TRANSITIONS - never_destroyed_while_booting
    assert {e.engine_id: e.status for e in fleet_model.engines.values()} == states


def test_each_state_change_carries_its_audit_row_except_going_to_sleep() -> None:
    fleet_model = model(fleet({"acme": 30, "globex": 20, "initech": 10}), rates=BUSY, seed=4)
    expected = {
        "running": {"provision", "wake", "start", "auto_restart_success"},
        "failed": {"provision", "health_failed"},
        "stopped": {"stop"},
        "destroying": {"destroy"},
    }
    for write in run(fleet_model, 600):
        if not isinstance(write, ChangeStatus):
            continue
        if write.to_status == "sleeping":
            assert write.audit == ()
            continue
        assert len(write.audit) == 1
        assert write.audit[0].action in expected[write.to_status]
        assert write.audit[0].engine_id == write.engine_id


def test_provision_rows_carry_boot_time_only_when_the_boot_succeeded() -> None:
    fleet_model = model(rates=replace(BUSY, crash_per_engine_per_s=0), seed=5)
    writes = [w for w in run(fleet_model, 300) if isinstance(w, ChangeStatus)]
    boots = [w for w in writes if w.from_status == "provisioning"]
    assert {w.to_status for w in boots} == {"running", "failed"}
    for write in boots:
        (row,) = write.audit
        assert row.action == "provision"
        if write.to_status == "running":
            assert row.duration_ms is not None
            assert row.duration_ms > 0
            assert write.boot_duration_ms == row.duration_ms
        else:
            assert row.duration_ms is None
            assert row.metadata == {"error": "boot timeout"}


def test_auto_restart_gives_up_after_exactly_8_failed_attempts() -> None:
    rates = replace(QUIET, incident_restart_success_prob=0.0, failed_cleanup_s=10_000)
    fleet_model = model(fleet({"acme": 1}), rates=rates)
    fleet_model.start_incident("acme", failed_fraction=1.0)
    rows = audit_rows(run(fleet_model, 3_600))
    actions = [r.action for r in rows if r.action != "health_check"]
    assert actions == (
        ["health_failed"]
        + ["auto_restart_start", "auto_restart_failed"] * MAX_RESTART_ATTEMPTS
        + ["auto_restart_gave_up"]
    )
    assert fleet_model.status_counts("acme")["failed"] == 1


def test_restart_attempts_wait_the_documented_backoff() -> None:
    rates = replace(QUIET, incident_restart_success_prob=0.0, failed_cleanup_s=10_000)
    fleet_model = model(fleet({"acme": 1}), rates=rates)
    fleet_model.start_incident("acme", failed_fraction=1.0)
    rows = audit_rows(run(fleet_model, 3_600, dt_s=0.25))
    ends = [r.timestamp for r in rows if r.action in ("health_failed", "auto_restart_failed")]
    starts = [r.timestamp for r in rows if r.action == "auto_restart_start"]
    assert len(starts) == len(ends) - 1 == MAX_RESTART_ATTEMPTS
    waits = [(start - end).total_seconds() for end, start in zip(ends, starts, strict=False)]
    assert waits == pytest.approx(
        [restart_backoff_s(n) for n in range(MAX_RESTART_ATTEMPTS)], abs=0.25
    )


def test_engines_that_gave_up_are_destroyed_after_the_cleanup_delay() -> None:
    rates = replace(QUIET, incident_restart_success_prob=0.0, failed_cleanup_s=120)
    fleet_model = model(fleet({"acme": 1}), rates=rates)
    fleet_model.start_incident("acme", failed_fraction=1.0)
    rows = audit_rows(run(fleet_model, 3_600))
    assert [r.action for r in rows][-2:] == ["auto_restart_gave_up", "destroy"]
    assert (rows[-1].timestamp - rows[-2].timestamp).total_seconds() == pytest.approx(120, abs=1)
    assert fleet_model.engines == {}


def test_a_resumed_crash_episode_still_gives_up_after_8_attempts_in_total() -> None:
    rates = replace(QUIET, restart_success_prob=0.0)
    engines = fleet({"acme": 1}, status="failed")
    progress = {engines[0].engine_id: RestartProgress(failures=5, gave_up=False)}
    fleet_model = model(engines, rates=rates, progress=progress)
    actions = [r.action for r in audit_rows(run(fleet_model, 3_600))]
    assert actions[:7] == ["auto_restart_start", "auto_restart_failed"] * 3 + [
        "auto_restart_gave_up"
    ]


def test_a_provisioning_engine_found_past_the_boot_deadline_fails_its_boot() -> None:
    stale = LoadedEngine("old", ACME.product_id, "user-1", "provisioning", T0 - timedelta(hours=1))
    fleet_model = model([stale])
    (write,) = [w for w in run(fleet_model, 5) if isinstance(w, ChangeStatus)]
    assert (write.from_status, write.to_status) == ("provisioning", "failed")
    assert write.audit[0].timestamp == stale.created_at


def test_incident_pushes_only_the_chosen_product_over_the_critical_ratio_for_minutes() -> None:
    fleet_model = model(fleet({"acme": 100, "globex": 60, "initech": 40}), rates=SimulationRates())
    fleet_model.start_incident("globex")
    ratios = {slug: [] for slug in ("acme", "globex", "initech")}  # type: dict[str, list[float]]
    for _ in range(600):
        fleet_model.step(1.0, T0)
        for slug, seen in ratios.items():
            seen.append(failed_ratio(fleet_model, slug))
    assert min(ratios["globex"]) >= 0.10
    assert max(ratios["acme"]) < 0.10
    assert max(ratios["initech"]) < 0.10


def test_unknown_incident_product_is_refused_naming_the_known_ones() -> None:
    fleet_model = model()
    with pytest.raises(ValueError, match=r"acme, globex, initech.* or health-loop"):
        fleet_model.start_incident("umbrella")


def _probed(writes: Sequence[Write]) -> set[str]:
    return {engine for w in writes if isinstance(w, RecordHealth) for engine in w.engine_ids}


def test_health_loop_incident_stops_probing_only_the_first_product() -> None:
    fleet_model = model(fleet({"acme": 10, "globex": 6, "initech": 4}))
    assert len(_probed(run(fleet_model, PROBE_INTERVAL_S))) == 20

    fleet_model.start_incident("health-loop")
    probed = _probed(run(fleet_model, 10 * PROBE_INTERVAL_S))

    assert probed == {e for e in fleet_model.engines if not e.startswith("acme-")}
    assert fleet_model.status_counts("acme")["running"] == 10


def test_without_probes_crashes_of_that_product_go_unnoticed() -> None:
    rates = replace(QUIET, crash_per_engine_per_s=0.01)
    fleet_model = model(fleet({"acme": 20, "globex": 20}), rates=rates)
    fleet_model.stall_health_loop("acme")

    rows = audit_rows(run(fleet_model, 600))

    crashed = {r.product_id for r in rows if r.action == "health_failed"}
    assert crashed == {GLOBEX.product_id}
    assert fleet_model.status_counts("acme")["failed"] == 0


def test_new_provisions_boot_the_version_being_rolled_out() -> None:
    fleet_model = model(fleet({"acme": 30, "globex": 20, "initech": 10}), rates=BUSY)
    writes = run(fleet_model, 120)
    inserted = [w.row for w in writes if isinstance(w, InsertEngine)]
    boots = [r for r in audit_rows(writes) if r.action == "provision" and r.duration_ms]
    assert inserted
    assert boots
    assert {row.engine_version for row in inserted} == {ROLLOUT_ENGINE_VERSION}
    assert {r.metadata["engine_version"] for r in boots} == {ROLLOUT_ENGINE_VERSION}


def test_a_product_at_its_quota_gets_no_new_engine() -> None:
    engines = fleet({"acme": 10, "globex": 10, "initech": 10})
    rates = replace(BUSY, destroys_per_s=0, crash_per_engine_per_s=0, boot_failure_prob=0)
    fleet_model = FleetModel(DEMO_PRODUCTS, rates=rates, rng=random.Random(3))
    fleet_model.load(engines, {}, T0, quotas={INITECH.product_id: 10})
    inserted = [w.row for w in run(fleet_model, 600) if isinstance(w, InsertEngine)]
    assert {row.product_id for row in inserted} == {ACME.product_id, GLOBEX.product_id}
    assert sum(1 for e in fleet_model.engines.values() if e.product is INITECH) == 10


def test_seeded_fleet_is_mid_rollout_and_one_product_is_near_its_quota() -> None:
    plan = plan_demo_fleet(engines=300, history_days=3.0, rng=random.Random(7), now=T0)
    versions = Counter(e.engine_version for e in plan.engines)
    assert set(versions) == {PREVIOUS_ENGINE_VERSION, ENGINE_VERSION, ROLLOUT_ENGINE_VERSION}
    assert versions[ENGINE_VERSION] > versions[ROLLOUT_ENGINE_VERSION] > 0
    by_product = Counter(e.product_id for e in plan.engines)
    for product in DEMO_PRODUCTS:
        usage = by_product[product.product_id] / plan.policies[product.slug]["max_engines"]
        if product.slug == NEAR_QUOTA_SLUG:
            assert 0.9 <= usage < 1
        else:
            assert usage < 0.5
    registered = {
        r.product_id: r.metadata["policy"] for r in plan.audit if r.action == "policy_register"
    }
    assert registered == {p.product_id: plan.policies[p.slug] for p in DEMO_PRODUCTS}


def test_a_seeded_model_makes_the_same_decisions_every_time() -> None:
    engines = fleet({"acme": 20, "globex": 10, "initech": 5})
    first = run(model(engines, rates=BUSY, seed=42), 120)
    second = run(model(engines, rates=BUSY, seed=42), 120)
    other = run(model(engines, rates=BUSY, seed=43), 120)
    assert first == second
    assert first != other


def test_population_stays_near_its_loaded_size_even_when_provisions_outpace_destroys() -> None:
    engines = fleet({"acme": 150, "globex": 90, "initech": 60})
    fleet_model = model(engines, rates=replace(SimulationRates(), provisions_per_s=0.1))
    sizes = []
    for _ in range(720):
        fleet_model.step(10.0, T0)
        sizes.append(len(fleet_model.engines))
    assert min(sizes) >= 240
    assert max(sizes) <= 360


def test_restart_progress_follows_the_latest_crash_episode() -> None:
    events = [
        ("a", "health_failed"),
        ("a", "auto_restart_failed"),
        ("a", "auto_restart_success"),
        ("a", "health_failed"),
        ("a", "auto_restart_failed"),
        ("a", "auto_restart_failed"),
        ("b", "auto_restart_failed"),
        ("c", "health_failed"),
        *[("c", "auto_restart_failed")] * 8,
        ("c", "auto_restart_gave_up"),
    ]
    assert restart_progress(events) == {
        "a": RestartProgress(failures=2, gave_up=False),
        "c": RestartProgress(failures=8, gave_up=True),
    }


def test_seeded_fleet_is_split_unevenly_and_mostly_running() -> None:
    assert split_counts(300, (0.5, 0.3, 0.2)) == [150, 90, 60]
    assert split_counts(7, (0.5, 0.3, 0.2)) == [4, 2, 1]
    statuses = Counter(final_statuses(300))
    assert sum(statuses.values()) == 300
    assert set(statuses) <= set(ENGINE_STATES)
    assert statuses["running"] > 0.7 * 300
    assert 1 <= statuses["failed"] <= 3
    assert statuses["sleeping"] > statuses["stopped"] > statuses["failed"]


def test_seed_plan_history_is_consistent_with_the_engines() -> None:
    now = T0
    plan = plan_demo_fleet(engines=120, history_days=1.0, rng=random.Random(7), now=now)
    assert len(plan.engines) == 120
    assert all(plan.start <= r.timestamp <= now for r in plan.audit)
    assert [r.timestamp for r in plan.audit] == sorted(r.timestamp for r in plan.audit)
    live = {e.engine_id: e for e in plan.engines}
    by_engine: dict[str, list[AuditEntry]] = {}
    for row in plan.audit:
        if row.engine_id is not None:
            by_engine.setdefault(row.engine_id, []).append(row)
    for engine_id, rows in by_engine.items():
        assert rows[0].action == "provision"
        if engine_id in live:
            assert "destroy" not in {r.action for r in rows}
            assert rows[0].product_id == live[engine_id].product_id
            assert rows[0].timestamp == live[engine_id].created_at
        else:
            assert rows[-1].action == "destroy"
    for engine in plan.engines:
        rows = by_engine.get(engine.engine_id, [])
        if engine.status == "provisioning":
            assert rows == []
        else:
            assert rows
            assert rows[0].action == "provision"
            assert (rows[0].duration_ms is not None) == (engine.boot_duration_ms is not None)
    assert any(e.engine_id not in live for e in (r for r in plan.audit if r.action == "destroy"))


def test_seed_plan_puts_provisions_and_crashes_in_the_last_hour() -> None:
    now = T0
    plan = plan_demo_fleet(engines=300, history_days=3.0, rng=random.Random(7), now=now)
    recent = Counter(
        (r.product_id, r.action) for r in plan.audit if r.timestamp >= now - timedelta(hours=1)
    )
    for product in DEMO_PRODUCTS:
        assert recent[(product.product_id, "provision")] >= 1
    assert sum(n for (_, action), n in recent.items() if action == "health_failed") >= 1
    assert len(plan.audit) >= 10_000
