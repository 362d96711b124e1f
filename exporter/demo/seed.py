"""Seeding the demo: the three demo products, a live fleet and days of consistent history.

``plan_demo_fleet`` is pure: from a seeded ``random.Random`` and a "now" it builds the engine
rows and the audit rows that led to them (and to engines already destroyed), using the same
rates and lifecycle rules as the simulator. ``seed_demo`` writes that plan in one
transaction, in bulk, unless the demo products are already there.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from exporter.demo.model import (
    DEFAULT_RATES,
    DEMO_FLEET_SHARES,
    DEMO_PRODUCTS,
    ENGINE_VERSION,
    MAX_RESTART_ATTEMPTS,
    PREVIOUS_ENGINE_VERSION,
    PROBE_INTERVAL_S,
    ROLLOUT_ENGINE_VERSION,
    AuditEntry,
    DemoProduct,
    EngineRow,
    SimulationRates,
    new_engine_row,
    poisson,
    random_hex,
    restart_backoff_s,
    sample_boot_ms,
)
from exporter.demo.store import (
    any_product_exists,
    insert_audit,
    insert_engines,
    insert_products,
    lock_seeding,
    open_database,
)

__all__ = ["DEMO_PRODUCTS", "DemoProduct", "SeedPlan", "plan_demo_fleet", "seed_demo"]

SEED_LOCK_KEY = 0x5E9D_DE30
"""Advisory lock that makes two demo seeders starting at once seed only once."""
DEMO_POLICIES: dict[str, dict[str, int]] = {
    "acme": {"max_engines": 1000, "rate_limit_rpm": 600},
    "globex": {"max_engines": 500, "rate_limit_rpm": 300},
    "initech": {"max_engines": 250, "rate_limit_rpm": 120},
}
DEFAULT_POLICY = {"max_engines": 500, "rate_limit_rpm": 300}
NEAR_QUOTA_SLUG = "initech"
NEAR_QUOTA_USAGE = 0.97
"""initech's quota is set just above its seeded fleet, so it runs near its quota."""
ROLLOUT_STARTED_AGO = timedelta(hours=12)
ROLLOUT_SHARE = 0.7
FINAL_SHARES = (("provisioning", 0.005), ("stopped", 0.05), ("sleeping", 0.12))
FAILED_SHARE = 0.007
FAILED_KINDS = ("restarting", "boot_failed", "gave_up")
MIN_FLEET_WITH_FAILURES = 10
MIN_HISTORY_S = 2 * 3600.0
"""Failed engines carry a crash episode of up to half an hour; history covers at least this."""
DESTROYED_PER_ENGINE_DAY = 0.5
RECENT_SHARE = 0.3
RECENT_MEAN_AGE_S = 6 * 3600.0
DESTROYED_MEAN_LIFE_S = 8 * 3600.0


def api_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def policy_of(product: DemoProduct, engines: int) -> dict[str, int]:
    """The product's policy for a seeded fleet of ``engines``: fixed quotas, except the
    product that runs near its quota (``EngineFleetNearQuota``)."""
    policy = dict(DEMO_POLICIES.get(product.slug, DEFAULT_POLICY))
    if product.slug == NEAR_QUOTA_SLUG:
        policy["max_engines"] = max(engines + 1, math.ceil(engines / NEAR_QUOTA_USAGE))
    return policy


@dataclass(frozen=True, slots=True)
class SeedPlan:
    start: datetime
    engines: tuple[EngineRow, ...]
    audit: tuple[AuditEntry, ...]
    """In time order, so audit ids follow timestamps as they do upstream."""
    policies: dict[str, dict[str, int]] = field(default_factory=dict)
    """Each product's policy, by slug."""


def split_counts(total: int, shares: Sequence[float]) -> list[int]:
    """``total`` split by ``shares``; what rounding leaves over goes to the first part."""
    counts = [math.floor(total * share / sum(shares)) for share in shares]
    counts[0] += total - sum(counts)
    return counts


def final_statuses(total: int) -> list[str]:
    """The live fleet's statuses: mostly running, some sleeping, a few stopped, a failed one
    or two, now and then one still provisioning."""
    statuses: list[str] = []
    for status, share in FINAL_SHARES:
        statuses += [status] * round(total * share)
    if total >= MIN_FLEET_WITH_FAILURES:
        statuses += ["failed"] * max(1, round(total * FAILED_SHARE))
    statuses = statuses[:total]
    return statuses + ["running"] * (total - len(statuses))


@dataclass
class _History:
    """Builds one engine's audit rows by walking the lifecycle with the simulator's rates."""

    rng: random.Random
    rates: SimulationRates
    rows: list[AuditEntry] = field(default_factory=list)

    def add(
        self,
        product: DemoProduct,
        row: EngineRow | None,
        action: str,
        at: datetime,
        *,
        actor: str = "system",
        metadata: dict[str, object] | None = None,
        duration_ms: int | None = None,
    ) -> None:
        self.rows.append(
            AuditEntry(
                timestamp=at,
                action=action,
                actor=actor,
                product_id=product.product_id,
                user_id=row.user_id if row else None,
                engine_id=row.engine_id if row else None,
                metadata=metadata or {},
                duration_ms=duration_ms,
            )
        )

    def episode(
        self, product: DemoProduct, row: EngineRow, at: datetime, failures: int, *, ends: str
    ) -> tuple[list[AuditEntry], datetime]:
        """A crash and its restart attempts: ``failures`` failed ones, then ``ends`` (success,
        gave_up, or pending: the next attempt has not started yet). Rows and the end time."""
        saved, self.rows = self.rows, []
        self.add(product, row, "health_failed", at, metadata={"consecutive_failures": 3})
        t = at
        attempts = failures + (1 if ends == "success" else 0)
        for attempt in range(1, attempts + 1):
            t += timedelta(seconds=restart_backoff_s(attempt - 1))
            self.add(product, row, "auto_restart_start", t, metadata={"attempt": attempt})
            t += timedelta(milliseconds=sample_boot_ms(self.rng, self.rates))
            outcome = "auto_restart_success" if attempt > failures else "auto_restart_failed"
            self.add(product, row, outcome, t, metadata={"attempt": attempt})
        if ends == "gave_up":
            self.add(product, row, "auto_restart_gave_up", t, metadata={"attempts": failures})
        rows, self.rows = self.rows, saved
        return rows, t

    def walk(self, product: DemoProduct, row: EngineRow, t: datetime, until: datetime) -> str:
        """Running, sleeping and stopped spells from ``t`` until ``until``; the final state."""
        rng, rates = self.rng, self.rates
        health = rates.health_check_sample_prob / PROBE_INTERVAL_S
        crash, sleep, stop = (
            rates.crash_per_engine_per_s,
            rates.sleep_per_engine_per_s,
            rates.stop_per_engine_per_s,
        )
        state = "running"
        while True:
            rate = {
                "running": health + crash + sleep + stop,
                "sleeping": rates.wake_per_engine_per_s,
                "stopped": rates.start_per_engine_per_s,
            }[state]
            t += timedelta(seconds=rng.expovariate(rate))
            if t >= until:
                return state
            if state == "sleeping":
                self.add(product, row, "wake", t, actor=product.slug)
                state = "running"
            elif state == "stopped":
                self.add(product, row, "start", t, actor=product.slug)
                state = "running"
            else:
                roll = rng.random() * rate
                if roll < health:
                    latency_ms = max(1, round(rng.lognormvariate(math.log(25), 0.5)))
                    self.add(product, row, "health_check", t, metadata={"latency_ms": latency_ms})
                elif roll < health + crash:
                    failures = 0
                    while failures < MAX_RESTART_ATTEMPTS - 1 and (
                        rng.random() >= rates.restart_success_prob
                    ):
                        failures += 1
                    rows, end = self.episode(product, row, t, failures, ends="success")
                    if end < until:
                        self.rows += rows
                        t = end
                elif roll < health + crash + sleep:
                    state = "sleeping"
                else:
                    self.add(product, row, "stop", t, actor=product.slug)
                    state = "stopped"

    def settle(
        self, product: DemoProduct, row: EngineRow, state: str, target: str, at: datetime
    ) -> None:
        """Bring a walked engine from ``state`` to ``target`` at ``at`` (sleep has no row)."""
        if state == target:
            return
        if state == "sleeping":
            self.add(product, row, "wake", at, actor=product.slug)
        elif state == "stopped":
            self.add(product, row, "start", at, actor=product.slug)
        if target == "stopped":
            self.add(product, row, "stop", at + timedelta(seconds=1), actor=product.slug)


def plan_demo_fleet(
    products: Sequence[DemoProduct] = DEMO_PRODUCTS,
    *,
    engines: int,
    history_days: float,
    rng: random.Random,
    now: datetime,
    rates: SimulationRates = DEFAULT_RATES,
) -> SeedPlan:
    """The demo's live engines and the history that produced them and the destroyed ones.

    Every live engine except one still provisioning has its ``provision`` row; each product
    has one engine provisioned within the last hour so rolling-hour figures start non-zero.
    """
    span_s = max(history_days * 86_400, MIN_HISTORY_S)
    start = now - timedelta(seconds=span_s)
    shares = _shares(len(products))
    history = _History(rng, rates)
    counts = split_counts(engines, shares)
    policies = {p.slug: policy_of(p, n) for p, n in zip(products, counts, strict=True)}
    for product in products:
        history.add(
            product,
            None,
            "policy_register",
            start,
            actor=product.slug,
            metadata={"policy": policies[product.slug]},
        )

    statuses = final_statuses(engines)
    rng.shuffle(statuses)
    slots = [p for p, n in zip(products, counts, strict=True) for _ in range(n)]
    rows: list[EngineRow] = []
    failed_seen = 0
    recent: set[str] = set()
    for product, status in zip(slots, statuses, strict=True):
        kind = status
        if status == "failed":
            kind = FAILED_KINDS[failed_seen % len(FAILED_KINDS)]
            failed_seen += 1
        if kind == "running" and product.slug not in recent:
            recent.add(product.slug)
            age_s = rng.uniform(300, 2700)
        else:
            age_s = _age_s(rng, kind, span_s)
        rows.append(_live_engine(history, product, kind, now - timedelta(seconds=age_s), now))

    destroyed = round(engines * DESTROYED_PER_ENGINE_DAY * span_s / 86_400)
    for product, count in zip(products, split_counts(destroyed, shares), strict=True):
        for _ in range(count):
            _destroyed_engine(history, product, start, now)

    for product, share in zip(products, shares, strict=True):
        for _ in range(poisson(rng, rates.admit_denied_per_s * share * span_s)):
            history.add(
                product,
                None,
                "admit_denied",
                start + timedelta(seconds=rng.uniform(0, span_s)),
                actor=product.slug,
                metadata={"reason": "rate_limited"},
            )

    rows.sort(key=lambda r: (r.created_at, r.engine_id))
    audit = sorted(history.rows, key=lambda r: r.timestamp)
    return SeedPlan(start=start, engines=tuple(rows), audit=tuple(audit), policies=policies)


def _shares(products: int) -> tuple[float, ...]:
    if products == len(DEMO_FLEET_SHARES):
        return DEMO_FLEET_SHARES
    return tuple([1 / products] * products)


def _age_s(rng: random.Random, kind: str, span_s: float) -> float:
    """How long ago an engine ending in ``kind`` was created."""
    if kind == "provisioning":
        return rng.uniform(0.5, 3.0)
    if kind == "boot_failed":
        return rng.uniform(120, 480)
    if kind in ("restarting", "gave_up"):
        return rng.uniform(MIN_HISTORY_S * 0.75, span_s)
    if rng.random() < RECENT_SHARE:
        return min(600 + rng.expovariate(1 / RECENT_MEAN_AGE_S), span_s)
    return rng.uniform(MIN_HISTORY_S, span_s)


def _new_user(rng: random.Random) -> str:
    return f"user-{random_hex(rng, 8)}"


def _provision(
    history: _History, product: DemoProduct, row: EngineRow, created: datetime, *, boots: bool
) -> int | None:
    """The engine's provision row: a boot of a sampled duration (returned), or a timeout."""
    if not boots:
        history.add(
            product,
            row,
            "provision",
            created,
            actor=product.slug,
            metadata={"error": "boot timeout"},
        )
        return None
    boot_ms = sample_boot_ms(history.rng, history.rates)
    history.add(
        product,
        row,
        "provision",
        created,
        actor=product.slug,
        metadata={"engine_version": row.engine_version},
        duration_ms=boot_ms,
    )
    return boot_ms


def _version_at(rng: random.Random, kind: str, age: timedelta) -> str:
    """The fleet mid-rollout: engines older than a day partly run the previous version, most
    run the current one, and the rollout version has reached most engines provisioned since
    it started (and every provision still booting)."""
    if kind == "provisioning" or (age < ROLLOUT_STARTED_AGO and rng.random() < ROLLOUT_SHARE):
        return ROLLOUT_ENGINE_VERSION
    if age > timedelta(days=1) and rng.random() < 0.4:
        return PREVIOUS_ENGINE_VERSION
    return ENGINE_VERSION


def _live_engine(
    history: _History, product: DemoProduct, kind: str, created: datetime, now: datetime
) -> EngineRow:
    """One engine alive now, ending in ``kind``, with the audit rows of its life so far."""
    rng, rates = history.rng, history.rates
    version = _version_at(rng, kind, now - created)
    status = "failed" if kind in FAILED_KINDS else kind
    row = new_engine_row(
        rng, product, _new_user(rng), status=status, created_at=created, engine_version=version
    )
    if kind == "provisioning":
        return row
    boot_ms = _provision(history, product, row, created, boots=kind != "boot_failed")
    if boot_ms is None:
        return row
    booted = created + timedelta(milliseconds=boot_ms)
    episode: list[AuditEntry] = []
    target = "running" if status == "failed" else status
    if kind in ("restarting", "gave_up"):
        gave_up = kind == "gave_up"
        failures = MAX_RESTART_ATTEMPTS if gave_up else rng.randint(1, 3)
        episode, end = history.episode(
            product, row, created, failures, ends="gave_up" if gave_up else "pending"
        )
        waited_s = (
            rng.uniform(300, 540) if gave_up else rng.uniform(1, restart_backoff_s(failures) * 0.8)
        )
        crash_at = max(
            now - (end - created) - timedelta(seconds=waited_s), booted + timedelta(seconds=2)
        )
        episode = [replace(r, timestamp=r.timestamp + (crash_at - created)) for r in episode]
        settle_at = last_health = crash_at - timedelta(seconds=1)
    elif status == "running":
        settle_at = now - timedelta(seconds=rng.uniform(0, 300))
        last_health = now - timedelta(seconds=rng.uniform(0, PROBE_INTERVAL_S))
    else:
        settle_at = last_health = now - timedelta(seconds=rng.uniform(60, 1200))
    settle_at = max(settle_at, booted + timedelta(seconds=1))
    state = history.walk(product, row, booted, settle_at)
    history.settle(product, row, state, target, settle_at)
    history.rows += episode
    if (
        status == "running"
        and rng.random() < rates.rotate_key_per_engine_per_s * (now - booted).total_seconds()
    ):
        at = booted + (now - booted) * rng.random()
        history.add(product, row, "rotate_key", at, actor=product.slug)
    return replace(row, boot_duration_ms=boot_ms, last_health_at=min(max(last_health, booted), now))


def _destroyed_engine(
    history: _History, product: DemoProduct, start: datetime, now: datetime
) -> None:
    """An engine created and destroyed within the history: audit rows only, no engine row."""
    rng, rates = history.rng, history.rates
    latest = now - timedelta(seconds=MIN_HISTORY_S)
    created = start + (latest - start) * rng.random()
    row = new_engine_row(rng, product, _new_user(rng), status="destroying", created_at=created)
    boot_ms = _provision(
        history, product, row, created, boots=rng.random() >= rates.boot_failure_prob
    )
    if boot_ms is None:
        destroyed = created + timedelta(seconds=60 + rng.uniform(300, 900))
    else:
        booted = created + timedelta(milliseconds=boot_ms)
        destroyed = booted + timedelta(seconds=rng.expovariate(1 / DESTROYED_MEAN_LIFE_S))
        last_moment = now - timedelta(seconds=60)
        if destroyed > last_moment:
            destroyed = booted + (last_moment - booted) * rng.random()
        history.walk(product, row, booted, destroyed)
    history.add(product, row, "destroy", destroyed, actor=product.slug)


async def seed_demo(
    dsn: str, *, engines: int = 300, history_days: float = 3.0, seed: int = 7
) -> tuple[DemoProduct, ...]:
    """Register the demo products and seed their fleet, unless the products already exist.

    One transaction under an advisory lock: a second seeder (or a restarted one) finds the
    products and leaves the database as it is.
    """
    if engines < 0 or history_days < 0:
        raise ValueError("engines and history_days must not be negative")
    database = open_database(dsn)
    try:
        async with database.write_transaction() as tx:
            await lock_seeding(tx, SEED_LOCK_KEY)
            if not await any_product_exists(tx, DEMO_PRODUCTS):
                plan = plan_demo_fleet(
                    DEMO_PRODUCTS,
                    engines=engines,
                    history_days=history_days,
                    rng=random.Random(seed),
                    now=datetime.now(UTC),
                )
                await insert_products(
                    tx,
                    DEMO_PRODUCTS,
                    api_key_hashes=[api_key_hash(p.api_key) for p in DEMO_PRODUCTS],
                    policies=[plan.policies[p.slug] for p in DEMO_PRODUCTS],
                    created_at=plan.start,
                )
                await insert_engines(tx, plan.engines)
                await insert_audit(tx, plan.audit)
    finally:
        await database.close()
    return DEMO_PRODUCTS
