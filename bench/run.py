"""``make bench``: refresh cost, HTTP throughput and memory at several fleet sizes, in one table.

For each scale a database is generated in a throwaway PostgreSQL (``bench.generate``), then:

* the refresher runs in this process against it: the first (cold) refresh, then steady
  refreshes each after ~1,000 new audit rows, timed and with their database time taken from
  ``pg_stat_statements``; the lifetime counters are checked against ``count(*)``;
* ``fleet-exporter serve`` runs as a subprocess: ``/prometheus``, ``/status``, ``/metrics`` and
  ``/engines`` are loaded on loopback (wrk, else an aiohttp client loop), each snapshot endpoint
  side by side with a bare aiohttp process giving the same answer (body and headers) to the
  same request (``bench.bare``), as the median of
  interleaved A/B pairs (``bench.pairs``: a noisy machine cannot fool it); resident memory is read
  from ``/proc`` after the first refresh and after the load;
* at the main scale, ``/engines`` is paged at growing offsets and by keyset cursor on the
  largest product, and query-exporter (``bench.peer``) is measured on the same database.

``--quick`` runs the same steps on small scales in a few minutes; ``--startup-only`` measures
start-up and a checkpoint restart against the single-statement pass at the sizes of
``--startup-rows`` (``bench.startup``). The table is printed and,
unless ``--no-append``, added to ``bench/RESULTS.md`` with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gzip
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg2

from bench import dbtime, peer
from bench.census import CensusCost, census_rows, measure_census_cost
from bench.generate import Scale, append_audit_rows, bench_key, generate
from bench.load import LoadResult, ensure_wrk, run_load, tool_name
from bench.pairs import PAIRS, PairedRatio, paired_ratio, run_interleaved
from bench.processes import ManagedProcess, fetch, start_bare, start_exporter, wait_for
from bench.report import (
    Row,
    append_results,
    load_average,
    machine,
    machine_load_text,
    render_table,
)
from bench.startup import StartupResult, measure_startup, startup_rows, startup_scale
from exporter import __version__, queries
from exporter.config import settings_from_mapping
from exporter.db import Database, Statement
from exporter.loopback import http_get
from exporter.pgcluster import EmbeddedPostgres, apply_schema
from exporter.refresher import Refresher
from exporter.selfmetrics import without_live

OUT_DIR = Path(__file__).resolve().parent / "out"
NEW_ROWS_PER_REFRESH = 1_000
SNAPSHOT_CONNECTIONS = 16
ENGINES_CONNECTIONS = 4
LEAD_PRODUCT = 1
"""product-001 holds half of every multi-product fleet (``bench.generate.LEAD_SHARE``)."""


@dataclass(frozen=True)
class Plan:
    mode: str
    scales: tuple[Scale, ...]
    main: Scale
    history_reference: Scale
    load_seconds: float
    steady_samples: int
    engine_offsets: tuple[int, ...]


FULL = Plan(
    mode="full",
    scales=(
        Scale(10_000, 1_000_000, 1),
        Scale(100_000, 5_000_000, 20),
        Scale(1_000_000, 2_000_000, 20),
        Scale(1_000_000, 20_000_000, 20),
        Scale(1_000_000, 5_000_000, 200),
    ),
    main=Scale(1_000_000, 20_000_000, 20),
    history_reference=Scale(1_000_000, 2_000_000, 20),
    load_seconds=3,
    steady_samples=7,
    engine_offsets=(0, 1_000, 10_000, 100_000, 400_000),
)

QUICK = Plan(
    mode="quick",
    scales=(
        Scale(10_000, 200_000, 1),
        Scale(100_000, 200_000, 20),
        Scale(100_000, 2_000_000, 20),
        Scale(100_000, 500_000, 200),
    ),
    main=Scale(100_000, 2_000_000, 20),
    history_reference=Scale(100_000, 200_000, 20),
    load_seconds=2,
    steady_samples=5,
    engine_offsets=(0, 10_000, 40_000),
)


@dataclass
class Refreshes:
    cold_s: float
    cold_db_ms: float | None
    steady_s: float
    steady_db_ms: float | None
    steady_statements: list[tuple[str, float]]
    counters_exact: bool


@dataclass
class ServedFigures:
    snapshot_loads: dict[str, PairedRatio[LoadResult]] = field(default_factory=dict)
    """Each snapshot endpoint against bare aiohttp giving the same answer, in interleaved pairs."""
    engines_load: LoadResult | None = None
    engines: dict[str, LoadResult] = field(default_factory=dict)
    exposition_bytes: int = 0
    exposition_gzip_bytes: int = 0
    lead_engines: int = 0
    rss_ready_mb: float = 0.0
    rss_after_mb: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass
class PeerFigures:
    version: str = ""
    db_ms_per_cycle: float | None = None
    scrape: LoadResult | None = None
    rss_mb: float = 0.0
    exposition_bytes: int = 0
    unavailable: str | None = None


@dataclass
class ScaleResult:
    scale: Scale
    generate_s: float
    refreshes: Refreshes
    served: ServedFigures
    peer: PeerFigures | None = None
    census: CensusCost | None = None


def short(scale: Scale) -> str:
    def size(n: int) -> str:
        return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k"

    return f"{size(scale.engines)} eng / {size(scale.audit_rows)} audit / {scale.products} prod"


async def _measure_refreshes(dsn: str, scale: Scale, samples: int, with_db: bool) -> Refreshes:
    settings = settings_from_mapping(
        {
            "database": {"dsn": dsn, "statement_timeout_s": 120},
            "refresh": {"interval_s": 3600, "max_staleness_s": 7200},
        },
        environ={},
    )
    database = Database(settings.database)
    refresher = Refresher(database, settings, version=__version__)

    async def timed_refresh(*, first: bool = False) -> tuple[float, float | None]:
        if with_db:
            dbtime.reset(dsn)
        started = time.perf_counter()
        refresh = refresher.refresh_until_counted if first else refresher.refresh_once
        if not await refresh():
            raise RuntimeError("refresh failed; see the log above")
        elapsed = time.perf_counter() - started
        return elapsed, dbtime.spent(dsn).total_ms if with_db else None

    try:
        cold_s, cold_db = await timed_refresh(first=True)
        steady: list[tuple[float, float | None]] = []
        for _ in range(samples):
            append_audit_rows(dsn, scale, NEW_ROWS_PER_REFRESH)
            steady.append(await timed_refresh())
        statements = dbtime.breakdown(dsn) if with_db else []
        snapshot = refresher.published.snapshot
        assert snapshot is not None
        counted = sum(sum(f.lifetime_by_action.values()) for f in snapshot.fleets.values())
    finally:
        await database.close()
    truth = _count(dsn, "SELECT count(*) FROM audit_log WHERE product_id IS NOT NULL")
    steady_db = [ms for _, ms in steady if ms is not None]
    return Refreshes(
        cold_s=cold_s,
        cold_db_ms=cold_db,
        steady_s=statistics.median(s for s, _ in steady),
        steady_db_ms=statistics.median(steady_db) if steady_db else None,
        steady_statements=statements,
        counters_exact=counted == truth,
    )


def _count(dsn: str, sql: str) -> int:
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            row = cursor.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        connection.close()


def _lead_product_engines(dsn: str) -> int:
    return _count(
        dsn,
        "SELECT count(*) FROM engines WHERE product_id = md5('bench-product-1')::uuid",
    )


def statement_name(text: str) -> str:
    """The exporter's name for a statement pg_stat_statements recorded, else its first words."""
    flat = " ".join(text.split())
    for statement in vars(queries).values():
        if isinstance(statement, Statement):
            prefix = " ".join(statement.sql.split()).split("%(")[0][:40]
            if flat.startswith(prefix):
                return statement.name
    return " ".join(flat.split()[:2])


def _next_link(url: str, headers: dict[str, str], base: str) -> str:
    status, response_headers, body = http_get(url, headers)
    link = response_headers.get("Link", "")
    if status != 200 or not link.startswith("<"):
        raise RuntimeError(f"GET {url} gave no next link ({status}): {body[:200]!r}")
    return base + link[1 : link.index(">")]


def _measure_served(
    workdir: Path, dsn: str, plan: Plan, scale: Scale, wrk: str | None
) -> ServedFigures:
    figures = ServedFigures(lead_engines=_lead_product_engines(dsn))
    key = {"X-Platform-Key": bench_key(LEAD_PRODUCT)}
    seconds = plan.load_seconds

    def load(url: str, headers: dict[str, str] | None = None, connections: int = 16) -> LoadResult:
        return run_load(wrk, url, seconds=seconds, connections=connections, headers=headers)

    exporter, base = start_exporter(workdir, dsn)
    bare: ManagedProcess | None = None
    try:
        exporter.wait_counted(base, timeout_s=1800)
        figures.rss_ready_mb = exporter.rss_mb()
        prometheus = fetch(f"{base}/prometheus", {})
        figures.exposition_bytes = len(prometheus.body)
        gzipped = fetch(f"{base}/prometheus", {"Accept-Encoding": "gzip"}).body
        figures.exposition_gzip_bytes = len(gzipped)
        if without_live(gzip.decompress(gzipped)) != without_live(prometheus.body):
            raise RuntimeError("gzip and plain expositions differ")
        answers = {"/prometheus": prometheus}
        for path in ("/status", "/metrics"):
            answers[path] = fetch(f"{base}{path}", key)
        # Like for like (see bench.bare): the same answer's headers and the same request.
        bare, bare_base = start_bare(workdir, answers)
        bare.wait_http(f"{bare_base}/prometheus", timeout_s=30)
        for path in answers:
            headers = key if path != "/prometheus" else None
            ours, bare_runs = run_interleaved(
                functools.partial(load, f"{base}{path}", headers, SNAPSHOT_CONNECTIONS),
                functools.partial(load, f"{bare_base}{path}", headers, SNAPSHOT_CONNECTIONS),
            )
            figures.snapshot_loads[path] = paired_ratio(ours, bare_runs, _rps)
        figures.engines_load = load(f"{base}/engines?limit=100", key, ENGINES_CONNECTIONS)
        if scale == plan.main:
            figures.engines = _measure_paging(base, key, plan, load, figures.lead_engines)
        figures.rss_after_mb = exporter.rss_mb()
        figures.peak_rss_mb = exporter.peak_rss_mb()
    finally:
        if bare is not None:
            bare.stop()
        exporter.stop()
    return figures


def _rps(result: LoadResult) -> float:
    return result.rps


def _measure_paging(
    base: str,
    key: dict[str, str],
    plan: Plan,
    load: Callable[..., LoadResult],
    lead_engines: int,
) -> dict[str, LoadResult]:
    results: dict[str, LoadResult] = {}
    for status in (None, "running"):
        filter_query = f"&status={status}" if status else ""
        for offset in plan.engine_offsets:
            url = f"{base}/engines?limit=100&offset={offset}{filter_query}"
            results[f"offset={offset}{filter_query}"] = load(url, key, ENGINES_CONNECTIONS)
        deepest = max(plan.engine_offsets)
        if deepest + 100 < lead_engines * (0.9 if status else 1):
            start = f"{base}/engines?limit=100&offset={deepest - 100}{filter_query}"
            cursor_url = _next_link(start, key, base)
            results[f"after=cursor@{deepest}{filter_query}"] = load(
                cursor_url, key, ENGINES_CONNECTIONS
            )
    return results


def _measure_peer(
    workdir: Path, cluster: EmbeddedPostgres, dbname: str, wrk: str | None, seconds: float
) -> PeerFigures:
    figures = PeerFigures()
    try:
        executable = peer.ensure_peer()
    except peer.PeerUnavailable as error:
        figures.unavailable = str(error)
        return figures
    figures.version = peer.peer_version(executable)
    dsn = cluster.dsn(dbname)
    process, url = peer.start_peer(
        executable,
        workdir,
        peer.sqlalchemy_dsn(cluster.host, cluster.port, cluster.user, dbname),
    )
    try:
        peer.wait_first_cycle(process, url, timeout_s=600)
        figures.exposition_bytes = len(fetch(url, {}).body)
        if dbtime.available(dsn):
            dbtime.reset(dsn)
            cycles = 2

            def finished_cycles() -> bool:
                return dbtime.spent(dsn, matching=peer.AUDIT_QUERY_MARK).calls >= cycles

            wait_for(finished_cycles, timeout_s=120, what="two query-exporter cycles")
            figures.db_ms_per_cycle = dbtime.spent(dsn).total_ms / cycles
        figures.scrape = run_load(wrk, url, seconds=seconds, connections=SNAPSHOT_CONNECTIONS)
        figures.rss_mb = process.rss_mb()
    finally:
        process.stop()
    return figures


def _measure_scale(
    cluster: EmbeddedPostgres,
    workdir: Path,
    plan: Plan,
    scale: Scale,
    index: int,
    wrk: str | None,
    with_peer: bool,
) -> ScaleResult:
    dbname = f"bench_{index}"
    dsn = cluster.create_database(dbname)
    try:
        apply_schema(dsn, indexes=False)
        started = time.monotonic()
        generate(dsn, scale)
        generate_s = time.monotonic() - started
        _say(f"  generated in {generate_s:.0f} s; refreshing")
        refreshes = asyncio.run(
            _measure_refreshes(dsn, scale, plan.steady_samples, dbtime.available(dsn))
        )
        _say(f"  cold {refreshes.cold_s:.2f} s, steady {refreshes.steady_s:.3f} s; serving")
        served = _measure_served(workdir, dsn, plan, scale, wrk)
        result = ScaleResult(scale, generate_s, refreshes, served)
        if scale == plan.main and dbtime.available(dsn):
            _say("  engine census against the plain count")
            result.census = measure_census_cost(dsn, scale)
        if with_peer and scale == plan.main:
            _say("  query-exporter side by side")
            result.peer = _measure_peer(workdir, cluster, dbname, wrk, plan.load_seconds)
        return result
    finally:
        _drop_database(cluster, dbname)


def _drop_database(cluster: EmbeddedPostgres, dbname: str) -> None:
    connection = psycopg2.connect(cluster.dsn())
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        connection.close()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load_text(result: LoadResult) -> str:
    text = f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
    if result.non_2xx or result.errors:
        text += f" ({result.non_2xx} non-2xx, {result.errors} errors)"
    return text


def _ms(value: float | None) -> str:
    return "n/a (no pg_stat_statements)" if value is None else f"{value:,.1f} ms"


def build_rows(plan: Plan, results: list[ScaleResult]) -> list[Row]:
    by_scale = {r.scale: r for r in results}
    rows: list[Row] = []
    for result in results:
        label = short(result.scale)
        refreshes, served = result.refreshes, result.served
        rows.append(
            Row(
                label,
                "first (cold) refresh: full audit pass",
                f"{refreshes.cold_s:.2f} s",
                f"database {_ms(refreshes.cold_db_ms)}",
            )
        )
        steady = Row(
            label,
            f"steady refresh, +{NEW_ROWS_PER_REFRESH:,} audit rows"
            f" (median of {plan.steady_samples})",
            f"{refreshes.steady_s * 1000:,.0f} ms",
            target="<= 1 s",
            met=refreshes.steady_s <= 1.0,
        )
        reference = by_scale.get(plan.history_reference)
        if result.scale == plan.main and reference is not None:
            ratio = refreshes.steady_s / reference.refreshes.steady_s
            steady = Row(
                label,
                steady.measure,
                steady.ours,
                f"{reference.refreshes.steady_s * 1000:,.0f} ms at "
                f"{reference.scale.audit_rows:,} audit rows",
                f"{ratio:.2f}x",
                "<= 1 s and <= 1.5x",
                refreshes.steady_s <= 1.0 and ratio <= 1.5,
            )
        rows.append(steady)
        rows.append(
            Row(
                label,
                "database time per steady refresh (pg_stat_statements)",
                _ms(refreshes.steady_db_ms),
                "top: "
                + ", ".join(
                    f"{statement_name(text)} {ms:.1f} ms"
                    for text, ms in refreshes.steady_statements
                ),
            )
        )
        if result.census is not None:
            rows += census_rows(label, result.census, statement_name)
        rows.append(
            Row(
                label,
                "lifetime counters equal count(*)",
                "yes" if refreshes.counters_exact else "NO",
                target="exact",
                met=refreshes.counters_exact,
            )
        )
        for path, comparison in served.snapshot_loads.items():
            ours, bare = comparison.median_pair
            clean = all(not run.non_2xx and not run.errors for run in comparison.ours)
            rows.append(
                Row(
                    label,
                    f"GET {path} ({SNAPSHOT_CONNECTIONS} connections), median pair",
                    _load_text(ours),
                    "bare aiohttp, same answer: " + _load_text(bare),
                    comparison.text(),
                    ">= 0.8x (median)",
                    comparison.median >= 0.8 and clean,
                )
            )
        rows.append(
            Row(
                label,
                f"GET /engines?limit=100 ({ENGINES_CONNECTIONS} connections)",
                _load_text(served.engines_load) if served.engines_load else "not measured",
                f"product with {served.lead_engines:,} engines",
            )
        )
        for name, load_result in served.engines.items():
            offset = name.split("&")[0]
            shallow = offset.startswith("offset=") and int(offset.split("=")[1]) <= 10_000
            rows.append(
                Row(
                    label,
                    f"GET /engines?limit=100&{name}",
                    _load_text(load_result),
                    f"product with {served.lead_engines:,} engines",
                    target="p99 <= 30 ms" if shallow else "",
                    met=(load_result.p99_ms <= 30 and not load_result.non_2xx) if shallow else None,
                )
            )
        rows.append(
            Row(
                label,
                "exposition size (text 0.0.4)",
                f"{served.exposition_bytes / 1024:,.1f} KiB",
                f"gzip {served.exposition_gzip_bytes / 1024:,.1f} KiB",
            )
        )
        rows.append(
            Row(
                label,
                "exporter RSS: after first refresh / after load / peak",
                f"{served.rss_ready_mb:.0f} / {served.rss_after_mb:.0f} / "
                f"{served.peak_rss_mb:.0f} MB",
                target="<= 150 MB",
                met=max(served.rss_after_mb, served.peak_rss_mb) <= 150,
            )
        )
        if result.peer is not None:
            rows += _peer_rows(label, result)
    return rows


def _peer_rows(label: str, result: ScaleResult) -> list[Row]:
    figures = result.peer
    assert figures is not None
    if figures.unavailable:
        return [Row(label, "query-exporter", "not measured", figures.unavailable)]
    name = f"query-exporter {figures.version}"
    rows = []
    ours_db = result.refreshes.steady_db_ms
    if ours_db is not None and figures.db_ms_per_cycle is not None:
        ratio = figures.db_ms_per_cycle / ours_db if ours_db else float("inf")
        rows.append(
            Row(
                label,
                "database time per refresh cycle",
                _ms(ours_db),
                f"{name}: {_ms(figures.db_ms_per_cycle)}",
                f"{ratio:,.0f}x lower",
                ">= 10x lower",
                ratio >= 10,
            )
        )
    ours_scrape = result.served.snapshot_loads["/prometheus"].median_pair[0]
    if figures.scrape is not None:
        ratio = ours_scrape.rps / figures.scrape.rps if figures.scrape.rps else 0.0
        rows.append(
            Row(
                label,
                "scrape throughput and latency (one run each, not a paired ratio)",
                _load_text(ours_scrape),
                f"{name}: {_load_text(figures.scrape)}",
                f"{ratio:.1f}x",
                ">= 3x",
                ratio >= 3,
            )
        )
    rows.append(
        Row(
            label,
            "RSS after first cycle and load",
            f"{result.served.rss_after_mb:.0f} MB",
            f"{name}: {figures.rss_mb:.0f} MB",
        )
    )
    rows.append(
        Row(
            label,
            "exposition size",
            f"{result.served.exposition_bytes / 1024:,.1f} KiB",
            f"{name}: {figures.exposition_bytes / 1024:,.1f} KiB",
        )
    )
    return rows


def _postgres_version(cluster: EmbeddedPostgres) -> str:
    connection = psycopg2.connect(cluster.dsn())
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            row = cursor.fetchone()
            assert row is not None
            return str(row[0]).split()[0]
    finally:
        connection.close()


def _details(
    mode: str, started: float, argv: list[str] | None, cluster_version: str, load_before: str
) -> list[tuple[str, str]]:
    command = shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])])
    return [
        ("mode", f"{mode}, {time.monotonic() - started:.0f} s in all"),
        ("command", f"`{command}` (what `make bench` runs; `BENCH_ARGS` adds the flags)"),
        ("machine", machine()),
        (
            "versions",
            f"PostgreSQL {cluster_version}, Python {platform.python_version()}, "
            f"aiohttp {aiohttp.__version__}, engine-fleet-exporter {__version__}",
        ),
        ("machine load", machine_load_text(load_before, load_average())),
    ]


def run_census_only(scale: Scale, argv: list[str] | None, *, append: bool) -> int:
    """``--census-only``: the engine census comparison alone, at one scale."""
    started = time.monotonic()
    load_before = load_average()
    with EmbeddedPostgres(durable=False) as cluster:
        postgres_version = _postgres_version(cluster)
        dsn = cluster.create_database("bench_census")
        apply_schema(dsn, indexes=False)
        _say(f"generating {scale.label}")
        generate(dsn, scale)
        if not dbtime.available(dsn):
            raise RuntimeError("pg_stat_statements is needed to measure database time")
        _say("engine census against the plain count")
        cost = measure_census_cost(dsn, scale)
    table = render_table(census_rows(short(scale), cost, statement_name))
    print(table)
    details = _details("census only", started, argv, postgres_version, load_before)
    details.append(("pairs", f"{PAIRS} interleaved pairs, each refresh after 1,000 new audit rows"))
    if append:
        append_results("engine census run", details, table)
    return 0


@dataclass(frozen=True)
class StartupOptions:
    rows: list[int]
    pairs: int = PAIRS
    data_dir: Path | None = None
    """A cluster kept there between runs: data generated once is measured again as is."""
    prepare_only: bool = False


def _startup_database(
    cluster: EmbeddedPostgres, options: StartupOptions, rows: int
) -> tuple[str, float | None]:
    """The database of one start-up size, generated unless the kept cluster holds it; the
    seconds its generation took (``None`` when it was already there)."""
    dbname = f"bench_startup_{rows}"
    marker = None if options.data_dir is None else options.data_dir / f"{dbname}.generated"
    if marker is not None and marker.is_file():
        return cluster.dsn(dbname), None
    _drop_database(cluster, dbname)
    dsn = cluster.create_database(dbname)
    apply_schema(dsn, indexes=False)
    started = time.monotonic()
    generate(dsn, startup_scale(rows))
    generate_s = time.monotonic() - started
    if marker is not None:
        marker.write_text(f"{rows} audit rows generated in {generate_s:.0f} s\n")
    return dsn, generate_s


def run_startup_only(options: StartupOptions, argv: list[str] | None, *, append: bool) -> int:
    """``--startup-only``: start-up against the single-statement pass, one size after another."""
    started = time.monotonic()
    load_before = load_average()
    workdir = OUT_DIR / datetime.now(UTC).strftime("startup-%Y%m%dT%H%M%S")
    if not options.prepare_only:
        workdir.mkdir(parents=True, exist_ok=True)
    results: list[StartupResult] = []
    generation: list[str] = []
    with EmbeddedPostgres(durable=False, kept_in=options.data_dir) as cluster:
        postgres_version = _postgres_version(cluster)
        for size in options.rows:
            _say(f"[{time.monotonic() - started:5.0f} s] start-up at {size:,} audit rows")
            dsn, generate_s = _startup_database(cluster, options, size)
            generation.append(
                f"{size:,} rows "
                + ("kept from an earlier run" if generate_s is None else f"{generate_s:.0f} s")
            )
            if options.prepare_only:
                continue
            results.append(measure_startup(workdir, dsn, size, pairs=options.pairs))
            if options.data_dir is None:
                _drop_database(cluster, dbname=f"bench_startup_{size}")
    if options.prepare_only:
        _say("data ready: " + ", ".join(generation))
        return 0
    table = render_table(startup_rows(results))
    print(table)
    details = _details("start-up only", started, argv, postgres_version, load_before)
    details.append(("data generation", ", ".join(generation)))
    details.append(("pairs", f"{options.pairs} interleaved pairs of database time"))
    if append:
        append_results("start-up run", details, table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small scales, a few minutes")
    parser.add_argument("--no-peer", action="store_true", help="skip query-exporter")
    parser.add_argument("--no-append", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument(
        "--census-only",
        action="store_true",
        help="only the engine census against the plain count, at 1M engines",
    )
    parser.add_argument(
        "--startup-only",
        action="store_true",
        help="only start-up and restart against the single-statement pass (--startup-rows)",
    )
    parser.add_argument(
        "--startup-rows",
        default="10000000,100000000",
        help="audit-log sizes for --startup-only, comma-separated (default 10M and 100M)",
    )
    parser.add_argument(
        "--startup-pairs",
        type=int,
        default=PAIRS,
        help=f"interleaved pairs of database time for --startup-only (default {PAIRS})",
    )
    parser.add_argument(
        "--startup-data",
        type=Path,
        help="keep --startup-only's generated data in a cluster in this directory and reuse it",
    )
    parser.add_argument(
        "--startup-prepare",
        action="store_true",
        help="with --startup-data: only generate the data of --startup-rows, measure nothing",
    )
    args = parser.parse_args(argv)
    if args.startup_prepare and args.startup_data is None:
        parser.error("--startup-prepare needs --startup-data")
    if args.startup_pairs < 1:
        parser.error("--startup-pairs must be at least 1")
    if args.startup_only or args.startup_prepare:
        options = StartupOptions(
            rows=[int(size) for size in args.startup_rows.split(",")],
            pairs=args.startup_pairs,
            data_dir=args.startup_data,
            prepare_only=args.startup_prepare,
        )
        return run_startup_only(options, argv, append=not args.no_append)
    plan = QUICK if args.quick else FULL
    if args.census_only:
        return run_census_only(plan.history_reference, argv, append=not args.no_append)
    workdir = OUT_DIR / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    wrk = ensure_wrk()
    started = time.monotonic()
    load_before = load_average()
    results: list[ScaleResult] = []
    with EmbeddedPostgres(durable=False) as cluster:
        postgres_version = _postgres_version(cluster)
        for index, scale in enumerate(plan.scales):
            _say(f"[{time.monotonic() - started:5.0f} s] {scale.label}")
            results.append(
                _measure_scale(cluster, workdir, plan, scale, index, wrk, not args.no_peer)
            )
    table = render_table(build_rows(plan, results))
    print(table)
    details = [
        *_details(plan.mode, started, argv, postgres_version, load_before),
        (
            "load tool",
            f"{tool_name(wrk)}, {plan.load_seconds:g} s per run on loopback; side-by-side ratios"
            f" are the median of {PAIRS} interleaved pairs (min-max of the pair ratios beside it)",
        ),
        (
            "data generation",
            ", ".join(f"{short(r.scale)} {r.generate_s:.0f} s" for r in results),
        ),
    ]
    if not args.no_append:
        append_results(f"{plan.mode} run", details, table)
    for name, value in details:
        _say(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
