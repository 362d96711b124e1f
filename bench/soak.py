"""``make soak``: a bounded soak with concurrent clients and writers while PostgreSQL restarts.

A small generated fleet in a throwaway (durable) PostgreSQL, ``fleet-exporter serve`` on a
short refresh interval, paced ``/prometheus``, ``/status``, ``/metrics`` and ``/engines`` clients,
writer threads inserting audit rows (some transactions rolled back) and moving engines, plus
the demo simulator when it is installed. PostgreSQL is restarted twice: a short fast stop
(last good data keeps serving) and an immediate stop that outlasts ``max_staleness_s`` (the
documented 503s must appear, and nothing else). Checks, each a row of the summary table:

* no 5xx except the documented 503s (FLEET_DATA_UNAVAILABLE, FLEET_DATA_STALE,
  DATABASE_UNAVAILABLE), no other error status, no failed connection to the exporter;
* the exporter's database connections never exceed its pool and come back to the baseline;
* resident memory stays flat;
* after the writers stop and one more refresh runs, every lifetime counter equals
  ``count(*)`` over the audit log;
* SIGTERM stops the exporter cleanly.

Exits non-zero on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
from prometheus_client.parser import text_string_to_metric_families

from bench.generate import Scale, bench_key, generate
from bench.processes import ManagedProcess, start_exporter, wait_for
from bench.report import Row, render_table
from exporter.db import APPLICATION_NAME
from exporter.domain import DOCUMENTED_ACTIONS, ENGINE_STATES, OTHER
from exporter.loopback import http_get
from exporter.pgcluster import EmbeddedPostgres, apply_schema

SOAK_SCALE = Scale(engines=20_000, audit_rows=200_000, products=5)
INTERVAL_S = 2.0
MAX_STALENESS_S = 8.0
POOL_MAX = 4
SHORT_OUTAGE_S = 3.0
LONG_OUTAGE_S = MAX_STALENESS_S + 4.0
CLIENTS_PER_ENDPOINT = 2
CLIENT_PAUSE_S = 0.02
WRITERS = 2
RSS_GROWTH_LIMIT_MB = 20.0
DOCUMENTED_503 = frozenset({"FLEET_DATA_UNAVAILABLE", "FLEET_DATA_STALE", "DATABASE_UNAVAILABLE"})
WRITER_ACTIONS = ("provision", "destroy", "health_failed", "auto_restart_start", "wake", "stop")


@dataclass
class Observations:
    responses: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    connections: list[tuple[float, int]] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    commits: int = 0
    rollbacks: int = 0
    write_errors: int = 0
    simulator: str = "not installed; writer threads only"
    lock: threading.Lock = field(default_factory=threading.Lock)


def _connect(dsn: str) -> Any:
    return psycopg2.connect(dsn, connect_timeout=2)


def _scalar(dsn: str, sql: str, params: dict[str, object] | None = None) -> Any:
    connection = _connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
            return row[0] if row else None
    finally:
        connection.close()


def _writer(dsn: str, seed: int, stop: threading.Event, seen: Observations) -> None:
    """Audit rows and engine moves in small transactions; survives the database going away."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            connection = _connect(dsn)
        except psycopg2.Error:
            with seen.lock:
                seen.write_errors += 1
            stop.wait(0.2)
            continue
        try:
            while not stop.is_set():
                engines = sorted(rng.sample(range(1, SOAK_SCALE.engines + 1), rng.randint(1, 3)))
                with connection.cursor() as cursor:
                    for engine in engines:
                        cursor.execute(
                            "INSERT INTO audit_log (product_id, user_id, engine_id, action,"
                            " duration_ms) SELECT product_id, user_id, engine_id, %(action)s,"
                            " %(duration)s FROM engines"
                            " WHERE engine_id = md5('bench-engine-' || %(engine)s)::uuid",
                            {
                                "action": rng.choice(WRITER_ACTIONS),
                                "duration": rng.choice([None, rng.randint(800, 40_000)]),
                                "engine": engine,
                            },
                        )
                        cursor.execute(
                            "UPDATE engines SET status = %(status)s"
                            " WHERE engine_id = md5('bench-engine-' || %(engine)s)::uuid",
                            {"status": rng.choice(ENGINE_STATES), "engine": engine},
                        )
                if rng.random() < 0.15:
                    connection.rollback()
                    with seen.lock:
                        seen.rollbacks += 1
                else:
                    connection.commit()
                    with seen.lock:
                        seen.commits += 1
                stop.wait(0.01)
        except psycopg2.Error:
            with seen.lock:
                seen.write_errors += 1
        finally:
            with contextlib.suppress(psycopg2.Error):
                connection.close()


async def _simulate(dsn: str, stop: asyncio.Event, seen: Observations) -> None:
    """The demo simulator, restarted after a database outage, when the package ships it."""
    try:
        from exporter.demo.seed import seed_demo
        from exporter.demo.simulator import FleetSimulator
    except ImportError:
        return
    restarts = 0
    seen.simulator = "running"
    while not stop.is_set():
        try:
            products = await seed_demo(dsn, engines=200)
            await FleetSimulator(dsn, products=products).run(stop)
        except Exception as error:
            restarts += 1
            seen.simulator = f"restarted {restarts} time(s) after: {type(error).__name__}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    if restarts == 0:
        seen.simulator = "ran throughout"


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    name: str,
    headers: dict[str, str],
    deadline: float,
    seen: Observations,
) -> None:
    while time.monotonic() < deadline:
        code = ""
        try:
            async with session.get(url, headers=headers) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            seen.responses[(name, 0, type(error).__name__)] += 1
            seen.violations.append(f"{name}: no answer ({type(error).__name__})")
            await asyncio.sleep(CLIENT_PAUSE_S)
            continue
        if status >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                code = json.loads(body)["error"]["code"]
            if not (status == 503 and code in DOCUMENTED_503):
                seen.violations.append(f"{name}: {status} {code or body[:120]!r}")
        seen.responses[(name, status, code)] += 1
        await asyncio.sleep(CLIENT_PAUSE_S)


def _monitor(
    dsn: str, exporter: ManagedProcess, stop: threading.Event, seen: Observations, t0: float
) -> None:
    while not stop.wait(1.0):
        now = time.monotonic() - t0
        with contextlib.suppress(OSError):
            seen.rss_mb.append((now, exporter.rss_mb()))
        with contextlib.suppress(psycopg2.Error):
            count = _exporter_connections(dsn)
            seen.connections.append((now, count))


def _exporter_connections(dsn: str, state: str | None = None) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %(name)s"
    if state is not None:
        sql += " AND state = %(state)s"
    return int(_scalar(dsn, sql, {"name": APPLICATION_NAME, "state": state}))


def _restart(
    cluster: EmbeddedPostgres, mode: str, down_s: float, base: str, seen: Observations
) -> None:
    cluster.stop(mode=mode)
    time.sleep(down_s)  # the outage itself is what is being measured
    cluster.start()
    started, started_unix = time.monotonic(), time.time()
    wait_for(
        lambda: (
            _exported_counters(base)[1] > started_unix
            and http_get(f"{base}/readyz", timeout_s=5)[0] == 200
        ),
        timeout_s=60,
        what="a successful refresh after the restart",
    )
    seen.recovery_s.append(time.monotonic() - started)


def _exported_counters(base: str) -> tuple[dict[tuple[str, str], int], float]:
    status, _, body = http_get(f"{base}/prometheus")
    if status != 200:
        raise RuntimeError(f"/prometheus answered {status}")
    counters: dict[tuple[str, str], int] = {}
    last_success = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "engine_fleet_lifecycle_events_total" and sample.value:
                counters[(sample.labels["product"], sample.labels["action"])] = int(sample.value)
            elif sample.name == "engine_fleet_exporter_last_refresh_success_timestamp_seconds":
                last_success = sample.value
    return counters, last_success


def _ground_truth(dsn: str) -> dict[tuple[str, str], int]:
    connection = _connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT p.slug, a.action, count(*) FROM audit_log AS a"
                " JOIN products AS p ON p.id = a.product_id GROUP BY 1, 2"
            )
            truth: Counter[tuple[str, str]] = Counter()
            for slug, action, rows in cursor.fetchall():
                truth[(slug, action if action in DOCUMENTED_ACTIONS else OTHER)] += int(rows)
            return dict(truth)
    finally:
        connection.close()


def _run_clients(base: str, deadline: float, seen: Observations) -> Callable[[], None]:
    """Start the HTTP clients in their own thread and event loop; returns a join function."""
    key = {"X-Platform-Key": bench_key(1)}
    targets = [
        ("/prometheus", f"{base}/prometheus", {}),
        ("/status", f"{base}/status", key),
        ("/metrics", f"{base}/metrics", key),
        ("/engines", f"{base}/engines?limit=100", key),
        ("/engines?status", f"{base}/engines?limit=50&status=running&offset=200", key),
    ]

    async def clients() -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(
                *(
                    _client(session, url, name, headers, deadline, seen)
                    for name, url, headers in targets
                    for _ in range(CLIENTS_PER_ENDPOINT)
                )
            )

    thread = threading.Thread(target=asyncio.run, args=(clients(),), name="soak-clients")
    thread.start()
    return thread.join


def _run_simulator(dsn: str, stop: threading.Event, seen: Observations) -> threading.Thread:
    async def simulate() -> None:
        done = asyncio.Event()
        task = asyncio.create_task(_simulate(dsn, done, seen))
        await asyncio.to_thread(stop.wait)
        done.set()
        await task

    thread = threading.Thread(target=asyncio.run, args=(simulate(),), name="soak-simulator")
    thread.start()
    return thread


def soak(seconds: float) -> list[Row]:
    seen = Observations()
    rows: list[Row] = []
    with (
        EmbeddedPostgres(durable=True) as cluster,
        tempfile.TemporaryDirectory(prefix="fleet-soak-") as tmp,
    ):
        dsn = cluster.create_database("orchestrator")
        apply_schema(dsn, indexes=False)
        generate(dsn, SOAK_SCALE)
        exporter, base = start_exporter(
            Path(tmp),
            dsn,
            interval_s=INTERVAL_S,
            max_staleness_s=MAX_STALENESS_S,
            statement_timeout_s=2,
            pool_max=POOL_MAX,
        )
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            exporter.wait_counted(base, timeout_s=120)
            t0 = time.monotonic()
            join_clients = _run_clients(base, t0 + seconds, seen)
            threads = [
                threading.Thread(target=_writer, args=(dsn, n, stop, seen), name=f"writer-{n}")
                for n in range(WRITERS)
            ]
            threads.append(threading.Thread(target=_monitor, args=(dsn, exporter, stop, seen, t0)))
            for thread in threads:
                thread.start()
            threads.append(_run_simulator(dsn, stop, seen))
            _sleep_until(t0 + 0.2 * seconds)
            baseline_rss = exporter.rss_mb()
            baseline_connections = _exporter_connections(dsn)
            _say(f"baseline: RSS {baseline_rss:.0f} MB, {baseline_connections} connection(s)")
            _sleep_until(t0 + 0.3 * seconds)
            _say(f"restart 1: fast stop, {SHORT_OUTAGE_S:g} s down")
            _restart(cluster, "fast", SHORT_OUTAGE_S, base, seen)
            _sleep_until(t0 + 0.55 * seconds)
            _say(f"restart 2: immediate stop, {LONG_OUTAGE_S:g} s down (past max_staleness_s)")
            _restart(cluster, "immediate", LONG_OUTAGE_S, base, seen)
            join_clients()
            stop.set()
            for thread in threads:
                thread.join()
            writes_done = time.time()
            _say("clients and writers stopped; waiting for one more refresh")
            wait_for(
                lambda: _exported_counters(base)[1] > writes_done + 0.5,
                timeout_s=30,
                what="a refresh after the writers stopped",
            )
            exported, _ = _exported_counters(base)
            truth = _ground_truth(dsn)
            final_rss = exporter.rss_mb()
            with contextlib.suppress(TimeoutError):
                wait_for(
                    lambda: _exporter_connections(dsn) <= baseline_connections,
                    timeout_s=15,
                    what="connections back to baseline",
                )
            final_connections = _exporter_connections(dsn)
            idle_in_transaction = _exporter_connections(dsn, "idle in transaction")
        finally:
            stop.set()
            exit_code = exporter.stop()
        rows += _verdicts(
            seen,
            baseline_rss=baseline_rss,
            final_rss=final_rss,
            baseline_connections=baseline_connections,
            final_connections=final_connections,
            idle_in_transaction=idle_in_transaction,
            exported=exported,
            truth=truth,
            exit_code=exit_code,
            label=f"{seconds:g} s soak",
        )
    return rows


def _verdicts(
    seen: Observations,
    *,
    baseline_rss: float,
    final_rss: float,
    baseline_connections: int,
    final_connections: int,
    idle_in_transaction: int,
    exported: dict[tuple[str, str], int],
    truth: dict[tuple[str, str], int],
    exit_code: int | None,
    label: str,
) -> list[Row]:
    total = sum(seen.responses.values())
    by_status = Counter[str]()
    for (_, status, code), n in seen.responses.items():
        by_status[f"{status} {code}".strip() if status else f"no answer {code}"] += n
    documented = sum(
        n for (_, s, c), n in seen.responses.items() if s == 503 and c in DOCUMENTED_503
    )
    max_connections = max((n for _, n in seen.connections), default=0)
    max_rss = max((mb for _, mb in seen.rss_mb), default=final_rss)
    mismatched = {
        key: (exported.get(key, 0), truth.get(key, 0))
        for key in set(exported) | set(truth)
        if exported.get(key, 0) != truth.get(key, 0)
    }
    mismatch_text = ", ".join(f"{k}: {e} vs {t}" for k, (e, t) in sorted(mismatched.items())[:5])
    return [
        Row(
            label,
            "requests",
            f"{total:,}",
            ", ".join(f"{k}: {n:,}" for k, n in by_status.most_common()),
        ),
        Row(
            label,
            "answers other than 2xx and the documented 503s",
            str(len(seen.violations)),
            "; ".join(sorted(set(seen.violations))[:5]),
            target="0",
            met=not seen.violations,
        ),
        Row(
            label,
            "documented 503s while data was unavailable/stale",
            f"{documented:,}",
            target="> 0 (the long outage must show)",
            met=documented > 0,
        ),
        Row(
            label,
            "first good refresh and ready after each restart",
            ", ".join(f"{s:.1f} s" for s in seen.recovery_s),
            target=f"<= {3 * INTERVAL_S:g} s",
            met=len(seen.recovery_s) == 2 and max(seen.recovery_s) <= 3 * INTERVAL_S,
        ),
        Row(
            label,
            "exporter connections: baseline / max seen / at the end",
            f"{baseline_connections} / {max_connections} / {final_connections}",
            f"{idle_in_transaction} idle in transaction at the end",
            target=f"max <= pool_max {POOL_MAX}; end <= baseline; none idle in transaction",
            met=max_connections <= POOL_MAX
            and final_connections <= baseline_connections
            and idle_in_transaction == 0,
        ),
        Row(
            label,
            "exporter RSS: baseline / max / end",
            f"{baseline_rss:.0f} / {max_rss:.0f} / {final_rss:.0f} MB",
            target=f"end - baseline <= {RSS_GROWTH_LIMIT_MB:g} MB",
            met=final_rss - baseline_rss <= RSS_GROWTH_LIMIT_MB,
        ),
        Row(
            label,
            "lifetime counters equal count(*) after the last refresh",
            f"{len(truth)} series compared, {len(mismatched)} differ",
            mismatch_text,
            target="all equal",
            met=not mismatched and bool(truth),
        ),
        Row(
            label,
            "writes during the soak",
            f"{seen.commits:,} commits, {seen.rollbacks:,} rollbacks",
            f"{seen.write_errors} writer reconnects; simulator: {seen.simulator}",
        ),
        Row(
            label,
            "exporter exit status on SIGTERM",
            str(exit_code),
            target="0",
            met=exit_code == 0,
        ),
    ]


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seconds", type=float, default=180.0, help="length of the loaded phase (>= 60)"
    )
    args = parser.parse_args(argv)
    if args.seconds < 60:
        parser.error("--seconds must be at least 60 (two restarts and recovery must fit)")
    rows = soak(args.seconds)
    print(render_table(rows))
    failed = [row.measure for row in rows if row.met is False]
    if failed:
        print("soak FAILED: " + "; ".join(failed))
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
