"""The demo fleet as a pure model: engine states, random decisions and the writes they imply.

Nothing here touches a database or a clock. ``FleetModel.step`` takes the simulated seconds
that passed and the wall-clock time to stamp rows with, and returns plain ``Write`` values
that the simulator applies with SQL, each in one transaction. Every decision comes from one
``random.Random``, so a seeded model is reproducible and its transitions can be checked
against the orchestrator's documented state graph without a database.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from exporter.domain import ENGINE_STATES

ALLOWED_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("provisioning", "running"),
        ("provisioning", "failed"),
        ("running", "sleeping"),
        ("sleeping", "running"),
        ("running", "stopped"),
        ("stopped", "running"),
        ("running", "failed"),
        ("failed", "running"),
        *((status, "destroying") for status in ENGINE_STATES if status != "destroying"),
    }
)
"""The orchestrator's documented lifecycle; row insert (as provisioning) and delete are apart."""

ENGINE_VERSION = "september-engine:2.3.0"
PREVIOUS_ENGINE_VERSION = "september-engine:2.2.1"
ROLLOUT_ENGINE_VERSION = "september-engine:2.4.0"
"""Being rolled out: every new provision boots it, so its share of the fleet grows."""
HEALTH_LOOP_INCIDENT = "health-loop"
"""The incident that stops the health loop probing the first product's engines."""
MAX_RESTART_ATTEMPTS = 8
RESTART_BACKOFF_FIRST_S = 5.0
RESTART_BACKOFF_CAP_S = 300.0
PROBE_INTERVAL_S = 30.0
BOOT_DEADLINE_S = 60.0


@dataclass(frozen=True, slots=True)
class DemoProduct:
    slug: str
    display_name: str
    api_key: str
    product_id: str


DEMO_PRODUCTS: tuple[DemoProduct, ...] = (
    DemoProduct(
        slug="acme",
        display_name="Acme Notes",
        api_key="pk-sept-demo-acme-8650LLtMg_blFQWFvN3UPFvh-tgQf_Pc",
        product_id="271a5987-4aea-40ce-9b71-d1bff635fb49",
    ),
    DemoProduct(
        slug="globex",
        display_name="Globex Assist",
        api_key="pk-sept-demo-globex-T2QvUnosUr1VRzTmsBgNaqavIliMDqAn",
        product_id="f71f75ab-edae-45d1-8c70-239457e8152e",
    ),
    DemoProduct(
        slug="initech",
        display_name="Initech Copilot",
        api_key="pk-sept-demo-initech-qbCvBDrtNCZ0oLT_rIDZzSe2qxei03-7",
        product_id="fe83d2f4-40cf-47ec-840d-58d7c7a33cbe",
    ),
)
"""Fixed keys and ids, so the README's curl tour works on every fresh demo."""

DEMO_FLEET_SHARES: tuple[float, ...] = (0.5, 0.3, 0.2)
"""How the seeded engines split over ``DEMO_PRODUCTS``: one dominant tenant, two smaller."""


@dataclass(frozen=True, slots=True)
class SimulationRates:
    """Rates per second of simulated time; the defaults make a demo that visibly moves.

    Fleet-wide rates (``*_per_s``) are spread over the products by their seeded share;
    ``*_per_engine_per_s`` apply to each engine in the state they leave.
    """

    provisions_per_s: float = 0.05
    destroys_per_s: float = 0.05
    crash_per_engine_per_s: float = 1 / 30_000
    sleep_per_engine_per_s: float = 1 / 7_200
    wake_per_engine_per_s: float = 1 / 900
    stop_per_engine_per_s: float = 1 / 40_000
    start_per_engine_per_s: float = 1 / 1_800
    rotate_key_per_engine_per_s: float = 1 / 2_000_000
    admit_denied_per_s: float = 0.01
    boot_failure_prob: float = 0.03
    restart_success_prob: float = 0.8
    incident_restart_success_prob: float = 0.03
    boot_median_ms: float = 4_000.0
    boot_sigma: float = 0.35
    health_check_sample_prob: float = 0.02
    failed_cleanup_s: float = 600.0
    """How long an engine that gave up (or failed its boot) stays failed before it is destroyed."""


DEFAULT_RATES = SimulationRates()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    timestamp: datetime
    action: str
    actor: str
    product_id: str | None
    user_id: str | None = None
    engine_id: str | None = None
    metadata: Mapping[str, object] = field(default_factory=dict)
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class EngineRow:
    engine_id: str
    product_id: str
    user_id: str
    status: str
    url: str
    port: int
    engine_version: str
    engine_key_hash: str
    engine_key_enc: str
    boot_duration_ms: int | None
    created_at: datetime
    last_health_at: datetime | None


@dataclass(frozen=True, slots=True)
class InsertEngine:
    row: EngineRow


@dataclass(frozen=True, slots=True)
class ChangeStatus:
    """One transition; ``from_status`` guards the update so a stale model cannot overwrite."""

    engine_id: str
    from_status: str
    to_status: str
    audit: tuple[AuditEntry, ...]
    boot_duration_ms: int | None = None
    last_health_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeleteEngine:
    engine_id: str


@dataclass(frozen=True, slots=True)
class RecordHealth:
    """Probes that passed: ``last_health_at`` for each engine, plus the sampled audit rows."""

    engine_ids: tuple[str, ...]
    at: datetime
    audit: tuple[AuditEntry, ...]


@dataclass(frozen=True, slots=True)
class RotateKey:
    engine_id: str
    engine_key_hash: str
    engine_key_enc: str
    audit: AuditEntry


@dataclass(frozen=True, slots=True)
class AppendAudit:
    """Audit rows with no change to an engine row (restart attempts, denied admits)."""

    audit: tuple[AuditEntry, ...]


Write = InsertEngine | ChangeStatus | DeleteEngine | RecordHealth | RotateKey | AppendAudit

Due = Literal["boot", "restart", "restart_outcome", "cleanup", "delete"]


@dataclass(frozen=True, slots=True)
class LoadedEngine:
    """An engine row as the simulator finds it in the database."""

    engine_id: str
    product_id: str
    user_id: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RestartProgress:
    failures: int
    gave_up: bool


@dataclass(frozen=True, slots=True)
class SimEngine:
    engine_id: str
    product: DemoProduct
    user_id: str
    status: str
    created_at: datetime
    next_probe_s: float
    due: Due | None = None
    due_s: float = math.inf
    boot_ms: int | None = None
    restart_failures: int = 0
    incident: bool = False


def restart_backoff_s(failures: int) -> float:
    """Wait before the next auto-restart attempt: 5 s doubling per failure, capped at 300 s."""
    return float(min(RESTART_BACKOFF_FIRST_S * 2**failures, RESTART_BACKOFF_CAP_S))


def sample_boot_ms(rng: random.Random, rates: SimulationRates) -> int:
    """A boot time from a lognormal around ``boot_median_ms``, inside the boot deadline."""
    value = rng.lognormvariate(math.log(rates.boot_median_ms), rates.boot_sigma)
    return int(min(max(value, 300.0), BOOT_DEADLINE_S * 1000 - 1))


def poisson(rng: random.Random, mean: float) -> int:
    """How many events of a Poisson process with this mean happen (Knuth; means are small)."""
    if mean <= 0:
        return 0
    threshold = math.exp(-min(mean, 700.0))
    count, product = 0, rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def random_hex(rng: random.Random, chars: int) -> str:
    return f"{rng.getrandbits(chars * 4):0{chars}x}"


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def new_engine_row(
    rng: random.Random,
    product: DemoProduct,
    user_id: str,
    *,
    status: str,
    created_at: datetime,
    engine_version: str = ENGINE_VERSION,
    boot_duration_ms: int | None = None,
    last_health_at: datetime | None = None,
) -> EngineRow:
    """A row as the orchestrator creates it: url and port set, key fields opaque."""
    port = rng.randrange(20_000, 30_000)
    return EngineRow(
        engine_id=random_uuid(rng),
        product_id=product.product_id,
        user_id=user_id,
        status=status,
        url=f"http://127.0.0.1:{port}",
        port=port,
        engine_version=engine_version,
        engine_key_hash=random_hex(rng, 64),
        engine_key_enc=random_hex(rng, 128),
        boot_duration_ms=boot_duration_ms,
        created_at=created_at,
        last_health_at=last_health_at,
    )


def restart_progress(events: Iterable[tuple[str, str]]) -> dict[str, RestartProgress]:
    """Where each engine's latest crash episode stands, from (engine_id, action) in time order.

    ``health_failed`` opens an episode; each ``auto_restart_failed`` counts an attempt;
    ``auto_restart_gave_up`` closes it for good. Engines without an episode are absent.
    """
    progress: dict[str, RestartProgress] = {}
    for engine_id, action in events:
        if action == "health_failed":
            progress[engine_id] = RestartProgress(0, gave_up=False)
        elif engine_id not in progress:
            continue
        elif action == "auto_restart_failed":
            previous = progress[engine_id]
            progress[engine_id] = replace(previous, failures=previous.failures + 1)
        elif action == "auto_restart_gave_up":
            progress[engine_id] = replace(progress[engine_id], gave_up=True)
        elif action == "auto_restart_success":
            del progress[engine_id]
    return progress


def _pull(wanted: int, actual: int) -> float:
    """A rate factor that grows steeply as ``actual`` falls short of ``wanted`` (and the
    reverse), so the fleet settles near its size whatever the configured rates."""
    return max(0.1, min(10.0, (wanted / max(actual, 1)) ** 4))


class FleetModel:
    """The simulator's picture of its products' engines, and the rules that move them."""

    def __init__(
        self,
        products: Sequence[DemoProduct],
        *,
        rates: SimulationRates,
        rng: random.Random,
    ) -> None:
        if not products:
            raise ValueError("the fleet model needs at least one product")
        self._products = tuple(products)
        self._by_id = {p.product_id: p for p in self._products}
        self._rates = rates
        self._rng = rng
        self._engines: dict[str, SimEngine] = {}
        self._targets: dict[str, int] | None = None
        self._quotas: Mapping[str, int] = {}
        self._pending_incidents: dict[str, float] = {}
        self._incident_ids: set[str] = set()
        self._unprobed_product_ids: set[str] = set()
        self.clock_s = 0.0

    @property
    def engines(self) -> Mapping[str, SimEngine]:
        return self._engines

    def status_counts(self, slug: str) -> dict[str, int]:
        counts = dict.fromkeys(ENGINE_STATES, 0)
        for engine in self._engines.values():
            if engine.product.slug == slug:
                counts[engine.status] += 1
        return counts

    def load(
        self,
        engines: Iterable[LoadedEngine],
        progress: Mapping[str, RestartProgress],
        now: datetime,
        *,
        quotas: Mapping[str, int] | None = None,
    ) -> None:
        """Replace the picture with the database's, resuming whatever was in flight.

        Boots finish after the rest of a fresh boot time; crash episodes resume at their
        attempt count; engines that gave up (or whose history is unknown) wait for cleanup.
        The population seen at the first load is the size the fleet is kept around; a
        product at its quota (``max_engines`` by product id) gets no provision, as upstream.
        """
        rng, rates = self._rng, self._rates
        self._quotas = dict(quotas or {})
        loaded: dict[str, SimEngine] = {}
        for row in engines:
            product = self._by_id.get(row.product_id)
            if product is None or row.status not in ENGINE_STATES:
                continue
            engine = SimEngine(
                engine_id=row.engine_id,
                product=product,
                user_id=row.user_id,
                status=row.status,
                created_at=row.created_at,
                next_probe_s=self.clock_s + rng.uniform(0, PROBE_INTERVAL_S),
                incident=row.engine_id in self._incident_ids,
            )
            age_s = max(0.0, (now - row.created_at).total_seconds())
            if row.status == "provisioning":
                boot_ms = sample_boot_ms(rng, rates)
                fails = rng.random() < rates.boot_failure_prob or age_s >= BOOT_DEADLINE_S
                wait_s = (BOOT_DEADLINE_S if fails else boot_ms / 1000) - age_s
                engine = self._schedule(engine, "boot", max(0.5, wait_s))
                engine = replace(engine, boot_ms=None if fails else boot_ms)
            elif row.status == "failed":
                episode = progress.get(row.engine_id)
                if episode is not None and not episode.gave_up:
                    failures = min(episode.failures, MAX_RESTART_ATTEMPTS - 1)
                    engine = replace(engine, restart_failures=failures)
                    engine = self._schedule(engine, "restart", restart_backoff_s(failures))
                else:
                    wait_s = rng.uniform(0.1, 1.0) * rates.failed_cleanup_s
                    engine = self._schedule(engine, "cleanup", wait_s)
            elif row.status == "destroying":
                engine = self._schedule(engine, "delete", 1.0)
            loaded[row.engine_id] = engine
        self._engines = loaded
        self._incident_ids &= loaded.keys()
        if self._targets is None:
            self._targets = {p.product_id: 0 for p in self._products}
            for engine in loaded.values():
                self._targets[engine.product.product_id] += 1

    def start_incident(self, name: str, *, failed_fraction: float = 0.4) -> None:
        """Start the incident ``name``: a product's slug makes ``failed_fraction`` of that
        product's running engines crash on the next step; ``health-loop`` stops probing the
        first product's engines (``stall_health_loop``)."""
        if name == HEALTH_LOOP_INCIDENT:
            self.stall_health_loop(self._products[0].slug)
            return
        self._product(name)
        if not 0 < failed_fraction <= 1:
            raise ValueError("failed_fraction must be in (0, 1]")
        self._pending_incidents[name] = failed_fraction

    def stall_health_loop(self, slug: str) -> None:
        """From the next step on, the health loop skips the product: its running engines are
        no longer probed (``last_health_at`` stops moving) and their crashes go unnoticed,
        as when the orchestrator's loop task dies."""
        self._unprobed_product_ids.add(self._product(slug).product_id)

    def _product(self, slug: str) -> DemoProduct:
        for product in self._products:
            if product.slug == slug:
                return product
        known = ", ".join(p.slug for p in self._products)
        raise ValueError(
            f"unknown incident {slug!r}; known: {known} (a burst of failures in that product)"
            f" or {HEALTH_LOOP_INCIDENT}"
        )

    def step(self, dt_s: float, now: datetime) -> list[Write]:
        """Advance ``dt_s`` simulated seconds; rows are stamped with ``now``."""
        self.clock_s += dt_s
        writes: list[Write] = []
        touched: set[str] = set()
        self._incidents(now, writes, touched)
        self._timers(now, writes, touched)
        self._random_transitions(dt_s, now, writes, touched)
        self._churn(dt_s, now, writes, touched)
        self._probes(now, writes)
        self._admits_and_rotations(dt_s, now, writes)
        return writes

    def _schedule(self, engine: SimEngine, due: Due, after_s: float) -> SimEngine:
        return replace(engine, due=due, due_s=self.clock_s + after_s)

    def _set(self, engine: SimEngine) -> None:
        self._engines[engine.engine_id] = engine

    def _audit(
        self,
        engine: SimEngine,
        action: str,
        now: datetime,
        *,
        actor: str = "system",
        metadata: Mapping[str, object] | None = None,
        duration_ms: int | None = None,
    ) -> AuditEntry:
        return AuditEntry(
            timestamp=now,
            action=action,
            actor=actor,
            product_id=engine.product.product_id,
            user_id=engine.user_id,
            engine_id=engine.engine_id,
            metadata=metadata or {},
            duration_ms=duration_ms,
        )

    def _transition(
        self,
        engine: SimEngine,
        to_status: str,
        audit: Sequence[AuditEntry],
        *,
        boot_duration_ms: int | None = None,
        last_health_at: datetime | None = None,
    ) -> ChangeStatus:
        write = ChangeStatus(
            engine_id=engine.engine_id,
            from_status=engine.status,
            to_status=to_status,
            audit=tuple(audit),
            boot_duration_ms=boot_duration_ms,
            last_health_at=last_health_at,
        )
        self._set(replace(engine, status=to_status))
        return write

    def _crash(self, engine: SimEngine, now: datetime, *, incident: bool) -> ChangeStatus:
        audit = self._audit(engine, "health_failed", now, metadata={"consecutive_failures": 3})
        write = self._transition(engine, "failed", [audit])
        failed = replace(self._engines[engine.engine_id], restart_failures=0, incident=incident)
        self._set(self._schedule(failed, "restart", restart_backoff_s(0)))
        if incident:
            self._incident_ids.add(engine.engine_id)
        return write

    def _destroy(self, engine: SimEngine, now: datetime) -> ChangeStatus:
        audit = self._audit(engine, "destroy", now, actor=engine.product.slug)
        write = self._transition(engine, "destroying", [audit])
        self._set(self._schedule(self._engines[engine.engine_id], "delete", 1.0))
        return write

    def _incidents(self, now: datetime, writes: list[Write], touched: set[str]) -> None:
        for slug, fraction in self._pending_incidents.items():
            running = [
                e
                for e in self._engines.values()
                if e.product.slug == slug and e.status == "running"
            ]
            for engine in self._rng.sample(running, math.ceil(fraction * len(running))):
                writes.append(self._crash(engine, now, incident=True))
                touched.add(engine.engine_id)
        self._pending_incidents.clear()

    def _timers(self, now: datetime, writes: list[Write], touched: set[str]) -> None:
        due = [e for e in self._engines.values() if e.due_s <= self.clock_s]
        for engine in sorted(due, key=lambda e: e.due_s):
            touched.add(engine.engine_id)
            writes.extend(self._fire(engine, now))

    def _fire(self, engine: SimEngine, now: datetime) -> list[Write]:
        rng, rates = self._rng, self._rates
        due = engine.due
        engine = replace(engine, due=None, due_s=math.inf)
        self._set(engine)
        if due == "boot":
            return [self._finish_boot(engine, now)]
        if due == "restart":
            attempt = engine.restart_failures + 1
            restart_ms = sample_boot_ms(rng, rates)
            self._set(self._schedule(engine, "restart_outcome", restart_ms / 1000))
            start = self._audit(engine, "auto_restart_start", now, metadata={"attempt": attempt})
            return [AppendAudit((start,))]
        if due == "restart_outcome":
            return [self._finish_restart(engine, now)]
        if due == "cleanup":
            return [self._destroy(engine, now)]
        if due == "delete":
            del self._engines[engine.engine_id]
            self._incident_ids.discard(engine.engine_id)
            return [DeleteEngine(engine.engine_id)]
        return []

    def _finish_boot(self, engine: SimEngine, now: datetime) -> ChangeStatus:
        actor = engine.product.slug
        if engine.boot_ms is None:
            audit = self._audit(engine, "provision", engine.created_at, actor=actor)
            audit = replace(audit, metadata={"error": "boot timeout"})
            write = self._transition(engine, "failed", [audit])
            failed = self._engines[engine.engine_id]
            self._set(self._schedule(failed, "cleanup", self._rates.failed_cleanup_s))
            return write
        audit = self._audit(
            engine,
            "provision",
            engine.created_at,
            actor=actor,
            metadata={"engine_version": ROLLOUT_ENGINE_VERSION},
            duration_ms=engine.boot_ms,
        )
        return self._transition(
            engine, "running", [audit], boot_duration_ms=engine.boot_ms, last_health_at=now
        )

    def _finish_restart(self, engine: SimEngine, now: datetime) -> Write:
        attempt = engine.restart_failures + 1
        success_prob = (
            self._rates.incident_restart_success_prob
            if engine.incident
            else self._rates.restart_success_prob
        )
        if self._rng.random() < success_prob:
            audit = self._audit(engine, "auto_restart_success", now, metadata={"attempt": attempt})
            write = self._transition(engine, "running", [audit], last_health_at=now)
            self._set(replace(self._engines[engine.engine_id], restart_failures=0))
            self._incident_ids.discard(engine.engine_id)
            return write
        rows = [self._audit(engine, "auto_restart_failed", now, metadata={"attempt": attempt})]
        engine = replace(engine, restart_failures=attempt)
        if attempt >= MAX_RESTART_ATTEMPTS:
            rows.append(
                self._audit(engine, "auto_restart_gave_up", now, metadata={"attempts": attempt})
            )
            self._set(self._schedule(engine, "cleanup", self._rates.failed_cleanup_s))
        else:
            self._set(self._schedule(engine, "restart", restart_backoff_s(attempt)))
        return AppendAudit(tuple(rows))

    def _random_transitions(
        self, dt_s: float, now: datetime, writes: list[Write], touched: set[str]
    ) -> None:
        rng, rates = self._rng, self._rates
        for engine in list(self._engines.values()):
            if engine.engine_id in touched or engine.due is not None:
                continue
            roll = rng.random()
            actor = engine.product.slug
            if engine.status == "running":
                crash = rates.crash_per_engine_per_s * dt_s
                sleep = crash + rates.sleep_per_engine_per_s * dt_s
                stop = sleep + rates.stop_per_engine_per_s * dt_s
                if roll < crash:
                    if engine.product.product_id in self._unprobed_product_ids:
                        continue
                    writes.append(self._crash(engine, now, incident=False))
                elif roll < sleep:
                    writes.append(self._transition(engine, "sleeping", []))
                elif roll < stop:
                    audit = self._audit(engine, "stop", now, actor=actor)
                    writes.append(self._transition(engine, "stopped", [audit]))
                else:
                    continue
            elif engine.status == "sleeping" and roll < rates.wake_per_engine_per_s * dt_s:
                audit = self._audit(engine, "wake", now, actor=actor)
                writes.append(self._transition(engine, "running", [audit], last_health_at=now))
            elif engine.status == "stopped" and roll < rates.start_per_engine_per_s * dt_s:
                audit = self._audit(engine, "start", now, actor=actor)
                writes.append(self._transition(engine, "running", [audit], last_health_at=now))
            else:
                continue
            touched.add(engine.engine_id)

    def _population(self) -> dict[str, int]:
        counts = {p.product_id: 0 for p in self._products}
        for engine in self._engines.values():
            counts[engine.product.product_id] += 1
        return counts

    def _churn(self, dt_s: float, now: datetime, writes: list[Write], touched: set[str]) -> None:
        """Provisions and destroys, each nudged towards the population of the first load."""
        rng, rates = self._rng, self._rates
        targets = self._targets or {p.product_id: 0 for p in self._products}
        population = self._population()
        target_total, total = sum(targets.values()), sum(population.values())
        grow = _pull(max(target_total, 1), total)
        shrink = _pull(total, max(target_total, 1))
        weights = [
            (targets[p.product_id] or 1)
            * _pull(targets[p.product_id] or 1, population[p.product_id])
            for p in self._products
        ]
        for _ in range(poisson(rng, rates.provisions_per_s * dt_s * grow)):
            product = rng.choices(self._products, weights=weights)[0]
            if population[product.product_id] >= self._quotas.get(product.product_id, math.inf):
                continue
            population[product.product_id] += 1
            writes.append(self._provision(product, now))
        destroyable = [
            e
            for e in self._engines.values()
            if e.status in ("running", "sleeping", "stopped")
            and e.due is None
            and e.engine_id not in touched
        ]
        count = min(poisson(rng, rates.destroys_per_s * dt_s * shrink), len(destroyable))
        for engine in rng.sample(destroyable, count):
            touched.add(engine.engine_id)
            writes.append(self._destroy(engine, now))

    def _provision(self, product: DemoProduct, now: datetime) -> InsertEngine:
        rng, rates = self._rng, self._rates
        taken = {e.user_id for e in self._engines.values() if e.product is product}
        user_id = f"user-{random_hex(rng, 8)}"
        while user_id in taken:
            user_id = f"user-{random_hex(rng, 8)}"
        row = new_engine_row(
            rng,
            product,
            user_id,
            status="provisioning",
            created_at=now,
            engine_version=ROLLOUT_ENGINE_VERSION,
        )
        boot_ms: int | None = sample_boot_ms(rng, rates)
        if rng.random() < rates.boot_failure_prob:
            boot_ms = None
        wait_s = BOOT_DEADLINE_S if boot_ms is None else boot_ms / 1000
        engine = SimEngine(
            engine_id=row.engine_id,
            product=product,
            user_id=user_id,
            status="provisioning",
            created_at=now,
            next_probe_s=self.clock_s + PROBE_INTERVAL_S,
            boot_ms=boot_ms,
        )
        self._set(self._schedule(engine, "boot", wait_s))
        return InsertEngine(row)

    def _probes(self, now: datetime, writes: list[Write]) -> None:
        """The health loop: every running engine every 30 s; a sample of probes is audited."""
        rng = self._rng
        probed: list[str] = []
        sampled: list[AuditEntry] = []
        for engine in list(self._engines.values()):
            if engine.status != "running" or engine.next_probe_s > self.clock_s:
                continue
            if engine.product.product_id in self._unprobed_product_ids:
                continue
            probed.append(engine.engine_id)
            next_probe_s = max(engine.next_probe_s + PROBE_INTERVAL_S, self.clock_s)
            self._set(replace(engine, next_probe_s=next_probe_s))
            if rng.random() < self._rates.health_check_sample_prob:
                latency_ms = max(1, round(rng.lognormvariate(math.log(25), 0.5)))
                sampled.append(
                    self._audit(engine, "health_check", now, metadata={"latency_ms": latency_ms})
                )
        if probed:
            writes.append(RecordHealth(tuple(probed), now, tuple(sampled)))

    def _admits_and_rotations(self, dt_s: float, now: datetime, writes: list[Write]) -> None:
        rng, rates = self._rng, self._rates
        live = [e for e in self._engines.values() if e.status in ("running", "sleeping")]
        if not live:
            return
        for _ in range(poisson(rng, rates.admit_denied_per_s * dt_s)):
            engine = rng.choice(live)
            audit = self._audit(
                engine,
                "admit_denied",
                now,
                actor=engine.product.slug,
                metadata={"reason": "rate_limited"},
            )
            writes.append(AppendAudit((audit,)))
        rotations = poisson(rng, rates.rotate_key_per_engine_per_s * dt_s * len(live))
        for engine in rng.sample(live, min(rotations, len(live))):
            audit = self._audit(engine, "rotate_key", now, actor=engine.product.slug)
            writes.append(
                RotateKey(engine.engine_id, random_hex(rng, 64), random_hex(rng, 128), audit)
            )
