"""The demo fleet on a real PostgreSQL: seeding once, and a simulator that writes a fleet the
exporter can trust (documented states, boot times, destroyed engines, per-product rows)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
from psycopg2 import sql

from exporter.demo.model import SimulationRates
from exporter.demo.seed import DEMO_PRODUCTS, seed_demo
from exporter.demo.simulator import FleetSimulator
from exporter.domain import ENGINE_STATES
from tests.support.db import FleetDatabase, execute, fetch_all, fetch_value, key_hash
from tests.support.service import wait_until

BRISK = SimulationRates(
    provisions_per_s=3,
    destroys_per_s=3,
    crash_per_engine_per_s=0.01,
    sleep_per_engine_per_s=0.01,
    wake_per_engine_per_s=0.05,
    stop_per_engine_per_s=0.01,
    start_per_engine_per_s=0.05,
    boot_failure_prob=0.2,
    restart_success_prob=0.5,
    failed_cleanup_s=20,
)


async def ticks(simulator: FleetSimulator, count: int) -> None:
    try:
        for _ in range(count):
            await simulator.tick()
    finally:
        await simulator.close()


def failed_ratios(dsn: str) -> dict[str, float]:
    rows = fetch_all(
        dsn,
        "SELECT p.slug, count(*) FILTER (WHERE e.status = 'failed')::float / count(*)"
        " FROM engines e JOIN products p ON p.id = e.product_id GROUP BY p.slug",
    )
    return dict(rows)


async def test_seed_demo_registers_the_three_products_with_their_key_hashes(
    fleet_db: FleetDatabase,
) -> None:
    products = await seed_demo(fleet_db.dsn, engines=20, history_days=0.1)
    assert products == DEMO_PRODUCTS
    rows = fetch_all(
        fleet_db.dsn, "SELECT id::text, slug, display_name, api_key_hash FROM products"
    )
    assert sorted(rows) == sorted(
        (p.product_id, p.slug, p.display_name, key_hash(p.api_key)) for p in DEMO_PRODUCTS
    )
    assert all(p.api_key.startswith(f"pk-sept-demo-{p.slug}-") for p in products)
    assert all(len(p.api_key) >= 42 for p in products)
    policies = fetch_all(fleet_db.dsn, "SELECT policy FROM products")
    assert all({"max_engines", "rate_limit_rpm"} <= set(policy) for (policy,) in policies)


async def test_seed_demo_seeds_an_uneven_fleet_with_recent_history_once(
    fleet_db: FleetDatabase,
) -> None:
    dsn = fleet_db.dsn
    await seed_demo(dsn, engines=300)
    audit = fetch_value(dsn, "SELECT count(*) FROM audit_log")
    assert audit >= 10_000
    sizes = dict(
        fetch_all(
            dsn,
            "SELECT p.slug, count(*) FROM engines e JOIN products p ON p.id = e.product_id"
            " GROUP BY p.slug",
        )
    )
    assert sizes == {"acme": 150, "globex": 90, "initech": 60}
    statuses = dict(fetch_all(dsn, "SELECT status, count(*) FROM engines GROUP BY 1"))
    assert set(statuses) <= set(ENGINE_STATES)
    assert statuses["running"] > 200
    recent = dict(
        fetch_all(
            dsn,
            "SELECT action, count(*) FROM audit_log"
            " WHERE timestamp > now() - interval '1 hour' GROUP BY 1",
        )
    )
    assert recent.get("provision", 0) > 0
    assert recent.get("health_failed", 0) > 0
    assert recent.get("auto_restart_start", 0) > 0
    assert fetch_value(dsn, "SELECT count(*) FROM audit_log WHERE timestamp > now()") == 0

    await seed_demo(dsn, engines=50)
    assert fetch_value(dsn, "SELECT count(*) FROM engines") == 300
    assert fetch_value(dsn, "SELECT count(*) FROM audit_log") == audit
    assert fetch_value(dsn, "SELECT count(*) FROM products") == 3


async def test_simulated_fleet_keeps_the_documented_invariants(fleet_db: FleetDatabase) -> None:
    dsn = fleet_db.dsn
    products = await seed_demo(dsn, engines=60, history_days=0.5)
    await ticks(FleetSimulator(dsn, products=products, rates=BRISK, seed=11), 40)

    statuses = {status for (status,) in fetch_all(dsn, "SELECT DISTINCT status FROM engines")}
    assert statuses <= set(ENGINE_STATES)
    new_boots = fetch_value(
        dsn,
        "SELECT count(*) FROM audit_log WHERE action = 'provision' AND duration_ms IS NOT NULL"
        " AND timestamp > now() - interval '1 minute'",
    )
    assert new_boots > 0
    assert (
        fetch_value(
            dsn,
            "SELECT count(*) FROM audit_log WHERE action = 'provision' AND duration_ms <= 0",
        )
        == 0
    )
    destroyed_and_gone = fetch_value(
        dsn,
        "SELECT count(DISTINCT a.engine_id) FROM audit_log a WHERE a.action = 'destroy'"
        " AND a.timestamp > now() - interval '1 minute'"
        " AND NOT EXISTS (SELECT 1 FROM engines e WHERE e.engine_id = a.engine_id)",
    )
    assert destroyed_and_gone > 0
    assert (
        fetch_value(
            dsn,
            "SELECT count(*) FROM audit_log a JOIN engines e ON e.engine_id = a.engine_id"
            " WHERE a.action = 'destroy' AND e.status <> 'destroying'",
        )
        == 0
    )
    assert (
        fetch_value(
            dsn,
            "SELECT count(*) FROM audit_log a JOIN engines e ON e.engine_id = a.engine_id"
            " WHERE a.product_id IS DISTINCT FROM e.product_id",
        )
        == 0
    )
    actors = fetch_all(
        dsn,
        "SELECT DISTINCT a.actor, p.slug FROM audit_log a JOIN products p ON p.id = a.product_id",
    )
    assert all(actor in ("system", slug) for actor, slug in actors)


async def test_each_state_change_commits_with_its_audit_row(fleet_db: FleetDatabase) -> None:
    dsn = fleet_db.dsn
    products = await seed_demo(dsn, engines=30, history_days=0.5)
    await ticks(FleetSimulator(dsn, products=products, rates=BRISK, seed=12), 30)
    running_without_provision = fetch_value(
        dsn,
        "SELECT count(*) FROM engines e WHERE e.status <> 'provisioning' AND NOT EXISTS"
        " (SELECT 1 FROM audit_log a WHERE a.engine_id = e.engine_id AND a.action = 'provision')",
    )
    assert running_without_provision == 0
    boot_times_match = fetch_value(
        dsn,
        "SELECT bool_and(e.boot_duration_ms = a.duration_ms) FROM engines e"
        " JOIN audit_log a ON a.engine_id = e.engine_id AND a.action = 'provision'"
        " WHERE a.duration_ms IS NOT NULL",
    )
    assert boot_times_match is True


async def test_incident_makes_only_that_product_critical(fleet_db: FleetDatabase) -> None:
    dsn = fleet_db.dsn
    products = await seed_demo(dsn, engines=120, history_days=0.5)
    simulator = FleetSimulator(dsn, products=products, seed=13)
    simulator.start_incident("initech")
    await ticks(simulator, 30)
    ratios = failed_ratios(dsn)
    assert ratios["initech"] >= 0.10
    assert ratios["acme"] < 0.10
    assert ratios["globex"] < 0.10
    assert (
        fetch_value(
            dsn,
            "SELECT count(*) FROM audit_log a JOIN products p ON p.id = a.product_id"
            " WHERE p.slug = 'initech' AND a.action = 'health_failed'"
            " AND a.timestamp > now() - interval '1 minute'",
        )
        >= 0.10 * 24
    )


def test_incident_for_an_unknown_product_names_the_demo_products() -> None:
    simulator = FleetSimulator("dbname=unused", products=DEMO_PRODUCTS)
    with pytest.raises(ValueError, match="acme, globex, initech"):
        simulator.start_incident("umbrella")


async def test_a_new_simulator_finishes_the_boots_another_one_started(
    fleet_db: FleetDatabase,
) -> None:
    dsn = fleet_db.dsn
    products = await seed_demo(dsn, engines=30, history_days=0.5)
    quiet = replace(BRISK, destroys_per_s=0, crash_per_engine_per_s=0, boot_failure_prob=0)
    await ticks(
        FleetSimulator(dsn, products=products, rates=replace(quiet, provisions_per_s=20), seed=14),
        1,
    )
    started = fetch_value(dsn, "SELECT count(*) FROM engines WHERE status = 'provisioning'")
    assert started > 0

    await ticks(
        FleetSimulator(dsn, products=products, rates=replace(quiet, provisions_per_s=0), seed=15),
        15,
    )
    assert fetch_value(dsn, "SELECT count(*) FROM engines WHERE status = 'provisioning'") == 0
    assert (
        fetch_value(
            dsn,
            "SELECT count(*) FROM engines e WHERE NOT EXISTS (SELECT 1 FROM audit_log a"
            " WHERE a.engine_id = e.engine_id AND a.action = 'provision')",
        )
        == 0
    )


async def test_run_moves_the_fleet_until_stopped(fleet_db: FleetDatabase) -> None:
    dsn = fleet_db.dsn
    products = await seed_demo(dsn, engines=30, history_days=0.5)
    before = fetch_value(dsn, "SELECT max(id) FROM audit_log")
    stop = asyncio.Event()
    simulator = FleetSimulator(dsn, products=products, rates=BRISK, seed=16, tick_s=0.05)
    running = asyncio.create_task(simulator.run(stop))

    async def moved() -> bool:
        return fetch_value(dsn, "SELECT max(id) FROM audit_log") > before

    await wait_until(moved, timeout_s=10, what="the simulator to write audit rows")
    stop.set()
    await asyncio.wait_for(running, timeout=5)


async def test_run_logs_one_line_while_the_database_refuses_it_and_then_carries_on(
    fleet_db: FleetDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = fleet_db.dsn
    admin_dsn = dsn.replace(f"dbname={fleet_db.name}", "dbname=postgres")
    products = await seed_demo(dsn, engines=30, history_days=0.5)
    caplog.set_level(logging.INFO, logger="exporter.demo")
    stop = asyncio.Event()
    simulator = FleetSimulator(dsn, products=products, rates=BRISK, seed=17, tick_s=0.05)
    running = asyncio.create_task(simulator.run(stop))

    def events(name: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == name]

    async def logged(name: str) -> bool:
        return bool(events(name))

    def allow_connections(allowed: bool) -> None:
        execute(
            admin_dsn,
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(fleet_db.name), sql.Literal(allowed)
            ),
        )

    try:
        before = fetch_value(dsn, "SELECT max(id) FROM audit_log")
        allow_connections(False)
        execute(
            admin_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(name)s",
            {"name": fleet_db.name},
        )
        await wait_until(lambda: logged("simulator_database_error"), what="the simulator to notice")
        await asyncio.sleep(0.3)
        allow_connections(True)
        await wait_until(
            lambda: logged("simulator_database_recovered"), what="the simulator to recover"
        )

        async def moved() -> bool:
            return fetch_value(dsn, "SELECT max(id) FROM audit_log") > before

        await wait_until(moved, what="new audit rows after the outage")
    finally:
        allow_connections(True)
        stop.set()
        await asyncio.wait_for(running, timeout=5)
    (warning,) = events("simulator_database_error")
    assert warning.levelno == logging.WARNING


def _probes(dsn: str, slug: str) -> dict[str, object]:
    return dict(
        fetch_all(
            dsn,
            "SELECT e.engine_id::text, e.last_health_at FROM engines e"
            " JOIN products p ON p.id = e.product_id"
            " WHERE p.slug = %(slug)s AND e.status = 'running'",
            {"slug": slug},
        )
    )


async def test_health_loop_incident_freezes_the_probes_of_one_product(
    fleet_db: FleetDatabase,
) -> None:
    dsn = fleet_db.dsn
    products = await seed_demo(dsn, engines=60, history_days=0.2)
    steady = replace(SimulationRates(), sleep_per_engine_per_s=0, stop_per_engine_per_s=0)
    simulator = FleetSimulator(dsn, products=products, rates=steady, seed=5)
    simulator.start_incident("health-loop")
    before = {slug: _probes(dsn, slug) for slug in ("acme", "globex")}

    await ticks(simulator, 40)

    after = {slug: _probes(dsn, slug) for slug in ("acme", "globex")}
    still_running = before["acme"].keys() & after["acme"].keys()
    assert len(still_running) >= 0.8 * len(before["acme"])
    assert all(after["acme"][e] == before["acme"][e] for e in still_running)
    probed = before["globex"].keys() & after["globex"].keys()
    assert probed
    assert all(after["globex"][e] != before["globex"][e] for e in probed)


async def test_the_product_near_its_quota_never_passes_it(fleet_db: FleetDatabase) -> None:
    dsn = fleet_db.dsn
    products = await seed_demo(dsn, engines=60, history_days=0.2)
    quota = fetch_value(
        dsn, "SELECT (policy->>'max_engines')::int FROM products WHERE slug = 'initech'"
    )
    simulator = FleetSimulator(
        dsn, products=products, rates=replace(BRISK, boot_failure_prob=0), seed=9
    )
    sizes = []
    try:
        for _ in range(40):
            await simulator.tick()
            sizes.append(
                fetch_value(
                    dsn,
                    "SELECT count(*) FROM engines e JOIN products p ON p.id = e.product_id"
                    " WHERE p.slug = 'initech'",
                )
            )
    finally:
        await simulator.close()
    assert max(sizes) <= quota
    assert max(sizes) >= 0.9 * quota
