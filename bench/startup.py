"""Start-up at a given history size: the chunked backfill against one single-statement pass.

For each audit-log size (generated inside PostgreSQL like the main benchmark, 10k engines,
20 products), on the same data:

* **served start**: ``fleet-exporter serve`` as its own process, with a checkpoint file and a
  2 s refresh interval while a writer adds 100 audit rows every 0.5 s: seconds from the
  process start to ``/status`` 200 and to ``/metrics`` 200, the longest statement the
  exporter ran (``pg_stat_statements`` ``max_exec_time``), and the p99 of the steady
  refreshes that ran during the backfill (the ``refresh_ok`` lines of its debug log);
* **database time**: the backfill's chunk statements against the single-statement pass over
  the same ids (all four chunk statements over the whole id range, in one transaction, as
  the first refresh ran them before the backfill existed), in ``PAIRS`` interleaved pairs;
* **restart with the checkpoint** the served start left behind: seconds to ``/metrics`` 200.

Run by ``python -m bench.run --startup-only --startup-rows 2000000,10000000``. At sizes whose
generation or seven pairs of full passes would take hours, ``--startup-pairs`` takes fewer
pairs (the table names the count) and ``--startup-data DIR`` keeps the generated databases in a
cluster in ``DIR``, so a later run measures the same data again without generating it
(``--startup-prepare`` only generates). Without ``--startup-data`` every run generates its data
from scratch.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from bench import dbtime
from bench.generate import Scale, append_audit_rows, bench_key
from bench.pairs import PAIRS, PairedRatio, paired_ratio, run_interleaved
from bench.processes import start_exporter, wait_for
from bench.report import Row
from exporter import queries
from exporter.config import settings_from_mapping
from exporter.db import Database
from exporter.domain import ROLLING_WINDOW, ActionCategories
from exporter.loopback import http_get
from exporter.refresher import Refresher

ENGINES = 10_000
PRODUCTS = 20
INTERVAL_S = 2.0
BACKFILL_STATEMENT_S = 2.0
CHUNK_STATEMENTS = "%id BETWEEN%"
"""The backfill's statements (and the single pass's, which are the same over one range)."""
START_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class ServedStart:
    status_s: float
    metrics_s: float
    longest_statement_ms: float
    steady_p99_ms: float
    steady_refreshes: int
    restart_metrics_s: float


@dataclass(frozen=True)
class StartupResult:
    rows: int
    served: ServedStart
    db_time: PairedRatio[float]
    counted_exactly: bool


def _single_pass_ms(dsn: str) -> float:
    """The four audit statements over the whole id range in one transaction, each run as the
    first refresh ran it before the backfill existed; their time."""

    async def run() -> None:
        settings = settings_from_mapping(
            {"database": {"dsn": dsn, "statement_timeout_s": 600}}, environ={}
        )
        database = Database(settings.database)
        categories = ActionCategories(
            settings.actions.provision,
            settings.actions.destroy,
            settings.actions.crash,
            settings.actions.restart,
        )
        refresher = Refresher(database, settings, version="bench")
        try:
            async with database.read_transaction() as tx:
                snapshot = await queries.fetch_snapshot(tx)
                low, high = await queries.fetch_audit_id_bounds(tx)
                assert low is not None
                assert high is not None
                since = snapshot.started_at - ROLLING_WINDOW
                totals = await queries.fetch_audit_chunk_totals(
                    tx,
                    low,
                    high,
                    boot_actions=categories.provision,
                    thresholds_ms=refresher.audit.tally.thresholds_ms,
                    since=since,
                )
                await queries.fetch_audit_chunk_missing_ids(tx, low, high)
                await queries.fetch_audit_chunk_recent_boots(
                    tx,
                    low,
                    high,
                    boot_actions=categories.provision,
                    sample_size=settings.metrics.boot_sample_size,
                    product_ids=sorted({t.product_id for t in totals if t.product_id}),
                )
                await queries.fetch_audit_chunk_last_hour(
                    tx, low, high, since=since, tracked_actions=sorted(categories.tracked_actions)
                )
        finally:
            await database.close()

    dbtime.reset(dsn)
    asyncio.run(run())
    return dbtime.spent(dsn, matching=CHUNK_STATEMENTS).total_ms


Counts = dict[tuple[str, str], int]


def _backfill_ms(dsn: str) -> tuple[float, Counts]:
    """A fresh refresher's whole backfill, chunk by chunk: the chunk statements' time, and
    the lifetime counts it published once counted."""

    async def run() -> Counts:
        settings = settings_from_mapping(
            {
                "database": {"dsn": dsn},
                "refresh": {"backfill_statement_s": BACKFILL_STATEMENT_S},
            },
            environ={},
        )
        database = Database(settings.database)
        refresher = Refresher(database, settings, version="bench")
        try:
            if not await refresher.refresh_until_counted():
                raise RuntimeError("the backfill failed; see the log above")
            snapshot = refresher.published.snapshot
            assert snapshot is not None
            return snapshot.lifetime_counts()
        finally:
            await database.close()

    dbtime.reset(dsn)
    counts = asyncio.run(run())
    return dbtime.spent(dsn, matching=CHUNK_STATEMENTS).total_ms, counts


def _keep_writing(dsn: str, scale: Scale, stop: threading.Event) -> None:
    """New orchestrator writes while the exporter starts: 100 rows every 0.5 s, bounded."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        append_audit_rows(dsn, scale, 100)
        stop.wait(0.5)


def _longest_exporter_statement_ms(dsn: str) -> float:
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT coalesce(max(s.max_exec_time), 0)::float8
                FROM pg_stat_statements AS s
                JOIN pg_database AS d ON d.oid = s.dbid
                WHERE d.datname = current_database()
                  AND s.query NOT ILIKE '%%pg_stat_statements%%'
                  AND s.query NOT ILIKE 'insert%%'
                """
            )
            row = cursor.fetchone()
            assert row is not None
            return float(row[0])
    finally:
        connection.close()


_REFRESH_OK = re.compile(r" refresh_ok .*audit=backfilling.* duration_s=([0-9.]+)")


def _steady_refreshes_ms(log: str) -> list[float]:
    """Durations of the refreshes that ran while the backfill was still counting."""
    return [float(m.group(1)) * 1000 for m in _REFRESH_OK.finditer(log)]


def _p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _time_to(base: str, path: str, started: float) -> float:
    headers = {"X-Platform-Key": bench_key(1)}

    def answered() -> bool:
        return http_get(f"{base}{path}", headers=headers, timeout_s=5)[0] == 200

    wait_for(answered, timeout_s=START_TIMEOUT_S, what=f"{path} 200")
    return time.monotonic() - started


def _checkpoint_counted(path: Path) -> bool:
    """The checkpoint file holds a fully counted history (written when the backfill ends)."""
    if not path.exists():
        return False
    plan = json.loads(path.read_text())["backfill"]
    return plan is None or plan["next_hi"] < plan["low"]


def _served_start(workdir: Path, dsn: str, scale: Scale) -> ServedStart:
    checkpoint = workdir / f"checkpoint-{scale.audit_rows}.json"
    checkpoint.unlink(missing_ok=True)
    state: dict[str, object] = {"checkpoint_path": str(checkpoint), "checkpoint_interval_s": 1}
    stop = threading.Event()
    writer = threading.Thread(target=_keep_writing, args=(dsn, scale, stop))
    start = functools.partial(
        start_exporter,
        workdir,
        dsn,
        interval_s=INTERVAL_S,
        refresh={"backfill_statement_s": BACKFILL_STATEMENT_S},
        log={"level": "debug"},
        state=state,
    )
    dbtime.reset(dsn)
    writer.start()
    try:
        started = time.monotonic()
        process, base = start()
        with process:
            status_s = _time_to(base, "/status", started)
            metrics_s = _time_to(base, "/metrics", started)
            longest_ms = _longest_exporter_statement_ms(dsn)
            wait_for(
                lambda: _checkpoint_counted(checkpoint),
                timeout_s=60,
                what="the checkpoint of the counted log",
            )
            log = process.log_path.read_text(errors="replace")
        steady = _steady_refreshes_ms(log)
        restarted_at = time.monotonic()
        process, base = start()
        with process:
            restart_s = _time_to(base, "/metrics", restarted_at)
    finally:
        stop.set()
        writer.join()
    return ServedStart(
        status_s=status_s,
        metrics_s=metrics_s,
        longest_statement_ms=longest_ms,
        steady_p99_ms=_p99(steady),
        steady_refreshes=len(steady),
        restart_metrics_s=restart_s,
    )


def _counted_exactly(dsn: str, published: list[Counts]) -> bool:
    """Every backfill's counts equal ``count(*)`` per product and action (nothing writes
    while the backfills run)."""
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT product_id::text, action, count(*) FROM audit_log"
                " WHERE product_id IS NOT NULL GROUP BY 1, 2"
            )
            truth = {(p, a): int(n) for p, a, n in cursor.fetchall()}
    finally:
        connection.close()
    tracked = ActionCategories(
        *(("provision",), ("destroy",), ("health_failed",), ("auto_restart_start",))
    ).tracked_actions
    expected: dict[tuple[str, str], int] = {}
    for (product_id, action), rows in truth.items():
        key = (product_id, action if action in tracked else "other")
        expected[key] = expected.get(key, 0) + rows
    return all(counts == expected for counts in published)


def startup_scale(rows: int) -> Scale:
    return Scale(engines=ENGINES, audit_rows=rows, products=PRODUCTS)


def measure_startup(workdir: Path, dsn: str, rows: int, *, pairs: int = PAIRS) -> StartupResult:
    """The start-up figures on a database ``generate`` filled at ``startup_scale(rows)``."""
    scale = startup_scale(rows)
    if not dbtime.available(dsn):
        raise RuntimeError("pg_stat_statements is needed to measure database time")
    served = _served_start(workdir, dsn, scale)
    published: list[Counts] = []

    def backfill() -> float:
        ms, counts = _backfill_ms(dsn)
        published.append(counts)
        return ms

    ours, single = run_interleaved(backfill, lambda: _single_pass_ms(dsn), pairs)
    return StartupResult(
        rows=rows,
        served=served,
        db_time=paired_ratio(ours, single, lambda ms: ms),
        counted_exactly=_counted_exactly(dsn, published),
    )


def _rows_label(rows: int) -> str:
    return f"{rows / 1_000_000:g}M audit rows"


def startup_rows(results: list[StartupResult]) -> list[Row]:
    table: list[Row] = []
    for result in results:
        label = _rows_label(result.rows)
        served = result.served
        ours, reference = result.db_time.median_pair
        table += [
            Row(
                label,
                "start to /status 200",
                f"{served.status_s:.2f} s",
                target="<= 3 s",
                met=served.status_s <= 3,
            ),
            Row(label, "start to /metrics 200 (history counted)", f"{served.metrics_s:.1f} s"),
            Row(
                label,
                "longest exporter statement",
                f"{served.longest_statement_ms:.0f} ms",
                target=f"<= {BACKFILL_STATEMENT_S + 1:g} s",
                met=served.longest_statement_ms <= (BACKFILL_STATEMENT_S + 1) * 1000,
            ),
            Row(
                label,
                f"backfill database time vs single-statement pass"
                f" ({len(result.db_time.ratios)} pairs)",
                f"{ours / 1000:.1f} s",
                f"{reference / 1000:.1f} s",
                result.db_time.text(),
                "<= 1.3x",
                result.db_time.median <= 1.3,
            ),
            Row(
                label,
                f"steady refresh p99 during the backfill ({served.steady_refreshes} refreshes)",
                f"{served.steady_p99_ms:.0f} ms",
                target="<= 1 s",
                met=served.steady_p99_ms <= 1000,
            ),
            Row(
                label,
                "restart with the checkpoint to /metrics 200",
                f"{served.restart_metrics_s:.2f} s",
                target=f"<= {2 * INTERVAL_S:g} s (2 intervals)",
                met=served.restart_metrics_s <= 2 * INTERVAL_S,
            ),
            Row(
                label,
                "counters equal count(*) after every backfill",
                "yes" if result.counted_exactly else "no",
                met=result.counted_exactly,
            ),
        ]
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large.served.restart_metrics_s / small.served.restart_metrics_s
        table.append(
            Row(
                f"{_rows_label(large.rows)} vs {_rows_label(small.rows)}",
                "restart with the checkpoint, larger vs smaller history",
                f"{large.served.restart_metrics_s:.2f} s",
                f"{small.served.restart_metrics_s:.2f} s",
                f"{ratio:.2f}x",
                "<= 1.5x",
                ratio <= 1.5,
            )
        )
    return table
