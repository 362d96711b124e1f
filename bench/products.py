"""``make bench-products``: refresh cost at thousands of products, optionally against an older
revision.

One database of 5,000 products, 100k engines and 500k audit rows (``bench.generate``; its
few ``provisioning`` engines are set to ``running`` so that a product's figures change only
when the writer touches it). A writer thread adds one audit row for a random share of the
products every refresh interval: 1 % of them, then all of them. For each share,
``fleet-exporter serve`` runs as a subprocess ``--pairs`` times (``PAIRS`` by default) from
this tree and, with ``--reference`` (a git revision, unpacked under ``bench/out``), as many
times from that revision, interleaved with ours; each run measures:

* steady refresh: the median wall time the refresher logs (``refresh_ok published_after_s``) and
  the process CPU time per refresh over a window of refreshes with no requests, from a
  process logging at ``debug`` (where ``refresh_ok`` is);
* then, from a second process at the default ``info`` (``debug`` adds the access log, a
  line written per request, which the loads would measure instead of the refresh):
  ``GET /status`` under 16 connections for a span of several refreshes (the load overlaps
  refreshes on purpose; its p99 is what a refresh costs the event loop), and
  ``GET /prometheus`` with ``Accept-Encoding: gzip`` (what Prometheus sends), 4 connections;
* peak resident memory (``VmHWM``), the higher of the two processes'.

The engine census runs one refresh in ``--census-every`` (4 by default: 60 s at a 15 s
interval, as the defaults have it), so the CPU per refresh is what an operator pays on
average; the wall times of census and other refreshes are reported apart. Figures are
medians over the runs with their min-max; ratios against a reference are the median of the
pair ratios with their min-max (``bench.pairs``). The table is printed and, unless
``--no-append``, added to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

from bench.generate import Scale, bench_key, generate
from bench.load import LoadResult, ensure_wrk, run_load, tool_name
from bench.pairs import PAIRS, paired_ratio, run_interleaved
from bench.processes import REPO_ROOT, ManagedProcess, cpu_s, start_exporter, wait_for
from bench.report import Row, append_results, machine, render_table
from exporter.pgcluster import EmbeddedPostgres, apply_schema

OUT_DIR = Path(__file__).resolve().parent / "out"
SCALE = Scale(engines=100_000, audit_rows=500_000, products=5_000)
INTERVAL_S = 2.0
QUIET_REFRESHES = 8
CENSUS_EVERY = 4
STATUS_LOAD_S = 10.0
PROMETHEUS_LOAD_S = 5.0
SHARES = {"1 % changing": 0.01, "all changing": 1.0}
RSS_TARGET_MB = 300.0


@dataclass(frozen=True)
class RunFigures:
    refresh_wall_ms: float | None
    """Through rendering and publishing, refreshes without the census; None from a revision
    that does not log it."""
    census_wall_ms: float | None
    """The same for the refreshes that took the engine census; None without any."""
    refresh_cpu_ms: float
    status: LoadResult
    prometheus: LoadResult
    peak_rss_mb: float


class AuditWriter:
    """Adds one ``start`` row for a random ``share`` of the products every interval."""

    def __init__(self, dsn: str, products: int, share: float) -> None:
        self._dsn = dsn
        self._count = max(1, round(products * share))
        self._products = products
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._random = random.Random(12)

    def __enter__(self) -> AuditWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        connection = psycopg2.connect(self._dsn)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                while not self._stop.is_set():
                    chosen = self._random.sample(range(1, self._products + 1), self._count)
                    cursor.execute(
                        "INSERT INTO audit_log (product_id, user_id, action)"
                        " SELECT md5('bench-product-' || n)::uuid, 'bench-writer', 'start'"
                        " FROM unnest(%s::int[]) AS n",
                        (chosen,),
                    )
                    self._stop.wait(INTERVAL_S)
        finally:
            connection.close()


def _refreshes(process: ManagedProcess) -> list[dict[str, object]]:
    lines = process.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if '"refresh_ok"' in line]


def _wait_refreshes(process: ManagedProcess, count: int) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []

    def enough() -> bool:
        if not process.alive():
            raise RuntimeError(f"exporter exited:\n{process.log_tail()}")
        found[:] = _refreshes(process)
        return len(found) >= count

    wait_for(enough, timeout_s=600, what=f"{count} refreshes")
    return found


def _median_wall_ms(lines: list[dict[str, object]], *, census: bool) -> float | None:
    walls = [
        float(str(line["published_after_s"]))
        for line in lines
        if bool(line.get("engine_census")) is census
    ]
    if not walls or any("published_after_s" not in line for line in lines):
        return None
    return statistics.median(walls) * 1000


def _run_once(
    workdir: Path, dsn: str, package_root: Path | None, wrk: str | None, census_every: int
) -> RunFigures:
    """One run: the refresh figures from a process at ``debug``, then the loads against one
    at ``info`` (the module's description says why)."""
    with _exporter(workdir, dsn, package_root, census_every, "debug") as (exporter, _):
        settled = len(_wait_refreshes(exporter, 3))
        cpu_before = cpu_s(exporter.pid)
        window = _wait_refreshes(exporter, settled + QUIET_REFRESHES)[settled:]
        cpu_per_refresh_ms = (cpu_s(exporter.pid) - cpu_before) / len(window) * 1000
        quiet_rss_mb = exporter.peak_rss_mb()
    with _exporter(workdir, dsn, package_root, census_every, "info") as (exporter, base):
        status = run_load(
            wrk,
            f"{base}/status",
            seconds=STATUS_LOAD_S,
            connections=16,
            headers={"X-Platform-Key": bench_key(1)},
        )
        prometheus = run_load(
            wrk,
            f"{base}/prometheus",
            seconds=PROMETHEUS_LOAD_S,
            connections=4,
            headers={"Accept-Encoding": "gzip"},
        )
        if status.non_2xx or prometheus.non_2xx:
            raise RuntimeError("non-2xx answers under load")
        loaded_rss_mb = exporter.peak_rss_mb()
    return RunFigures(
        refresh_wall_ms=_median_wall_ms(window, census=False),
        census_wall_ms=_median_wall_ms(window, census=True),
        refresh_cpu_ms=cpu_per_refresh_ms,
        status=status,
        prometheus=prometheus,
        peak_rss_mb=max(quiet_rss_mb, loaded_rss_mb),
    )


@contextlib.contextmanager
def _exporter(
    workdir: Path, dsn: str, package_root: Path | None, census_every: int, level: str
) -> Iterator[tuple[ManagedProcess, str]]:
    """A running exporter refreshing every ``INTERVAL_S``, its history counted."""
    # a census is due once its interval has passed: half a refresh short of the n-th one
    census_interval_s = (census_every - 0.5) * INTERVAL_S if census_every else 3600
    exporter, base = start_exporter(
        workdir,
        dsn,
        interval_s=INTERVAL_S,
        max_staleness_s=600,
        statement_timeout_s=120,
        refresh={"engine_census_interval_s": census_interval_s},
        log={"level": level, "format": "json"},
        package_root=package_root,
    )
    with exporter:
        exporter.wait_counted(base, timeout_s=1800)
        yield exporter, base


def _unpack(reference: str, workdir: Path) -> Path:
    target = workdir / f"reference-{reference.replace('/', '_')}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", reference, "exporter"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def _settle_and_count(dsn: str) -> None:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE engines SET status = 'running' WHERE status = 'provisioning'")
            cursor.execute("VACUUM ANALYZE engines")
    finally:
        connection.close()


@dataclass(frozen=True)
class Measure:
    name: str
    figure: Callable[[RunFigures], float | None]
    unit: str
    limits: dict[str, float]
    """An absolute upper limit per share, where the issue sets one."""
    no_worse_than_reference: tuple[str, ...] = ()
    """Shares where the paired ratio must not exceed 1."""

    def known(self, run: RunFigures) -> float:
        return self.figure(run) or 0.0


MEASURES = (
    Measure(
        "steady refresh without census, wall through publishing",
        lambda r: r.refresh_wall_ms,
        "ms",
        {"1 % changing": 300.0},
    ),
    Measure(
        "census refresh, wall through publishing",
        lambda r: r.census_wall_ms,
        "ms",
        {},
    ),
    Measure(
        "process CPU per refresh, census included",
        lambda r: r.refresh_cpu_ms,
        "ms",
        {},
        ("all changing",),
    ),
    Measure(
        "GET /status p99 while refreshes run (16 conn)",
        lambda r: r.status.p99_ms,
        "ms",
        {"1 % changing": 5.0},
    ),
    Measure("GET /prometheus, gzip (4 conn)", lambda r: r.prometheus.rps, "req/s", {}),
    Measure(
        "peak RSS",
        lambda r: r.peak_rss_mb,
        "MB",
        {"1 % changing": RSS_TARGET_MB, "all changing": RSS_TARGET_MB},
    ),
)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) else None


def _figure_rows(
    share: str, reference: str | None, ours: list[RunFigures], theirs: list[RunFigures]
) -> list[Row]:
    label = f"{SCALE.products:,} prod / 100k eng, {share}"
    rows = []
    for measure in MEASURES:
        mine = _median([measure.figure(run) for run in ours])
        other = _median([measure.figure(run) for run in theirs]) if theirs else None
        assert mine is not None
        ratio = None
        if other is not None:
            ratio = paired_ratio(ours, theirs, measure.known)
        limit = measure.limits.get(share)
        checks = []
        target = ""
        if limit is not None:
            target, checks = f"<= {limit:g} {measure.unit}", [mine <= limit]
        if share in measure.no_worse_than_reference and ratio is not None:
            target, checks = "<= 1.0x", [ratio.median <= 1.0]
        rows.append(
            Row(
                label,
                measure.name,
                f"{mine:,.1f} {measure.unit} ({_spread(measure, ours)})",
                _reference_text(reference, other, measure.unit),
                ratio.text() if ratio is not None else "",
                target,
                all(checks) if checks else None,
            )
        )
    return rows


def _spread(measure: Measure, runs: list[RunFigures]) -> str:
    """The min-max over the runs, beside their median."""
    known = [measure.known(run) for run in runs]
    return f"{min(known):,.1f}-{max(known):,.1f}, {len(known)} runs"


def _reference_text(reference: str | None, figure: float | None, unit: str) -> str:
    if reference is None:
        return "not measured"
    return (
        f"{reference}: {figure:,.1f} {unit}" if figure is not None else f"{reference}: not logged"
    )


def _run_share(
    measure_ours: Callable[[], RunFigures],
    measure_reference: Callable[[], RunFigures] | None,
    runs: int,
) -> tuple[list[RunFigures], list[RunFigures]]:
    """``runs`` runs of ours, interleaved with as many of the reference when there is one."""
    if measure_reference is None:
        return [measure_ours() for _ in range(runs)], []
    return run_interleaved(measure_ours, measure_reference, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.products", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--reference",
        help="git revision to compare with, in interleaved pairs (default: none; the targets"
        " are absolute, and a reference run doubles the time)",
    )
    parser.add_argument("--ours", help="git revision to measure (default: this tree)")
    parser.add_argument(
        "--pairs", type=int, default=PAIRS, help="runs per side and share (default: %(default)s)"
    )
    parser.add_argument(
        "--share", choices=sorted(SHARES), action="append", help="only this share (repeatable)"
    )
    parser.add_argument(
        "--census-every",
        type=int,
        default=CENSUS_EVERY,
        help="the engine census every n-th refresh, 0 for none (default: %(default)s)",
    )
    parser.add_argument("--no-append", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    workdir = OUT_DIR / datetime.now(UTC).strftime("products-%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    reference_root = _unpack(args.reference, workdir) if args.reference else None
    ours_root = _unpack(args.ours, workdir) if args.ours else None
    wrk = ensure_wrk()
    started = time.monotonic()
    rows: list[Row] = []
    with EmbeddedPostgres(durable=False) as cluster:
        dsn = cluster.create_database("products")
        apply_schema(dsn, indexes=False)
        generate(dsn, SCALE)
        _settle_and_count(dsn)
        generated_s = time.monotonic() - started
        for share_name, share in SHARES.items():
            if args.share and share_name not in args.share:
                continue
            print(f"[{time.monotonic() - started:5.0f} s] {share_name}", file=sys.stderr)
            with AuditWriter(dsn, SCALE.products, share):
                ours, theirs = _run_share(
                    lambda: _run_once(workdir, dsn, ours_root, wrk, args.census_every),
                    (lambda: _run_once(workdir, dsn, reference_root, wrk, args.census_every))
                    if reference_root is not None
                    else None,
                    args.pairs,
                )
            rows += _figure_rows(share_name, args.reference, ours, theirs)
    table = render_table(rows)
    print(table)
    command = shlex.join(["python", "-m", "bench.products", *(argv or sys.argv[1:])])
    details = [
        ("command", f"`{command}`, {time.monotonic() - started:.0f} s in all"),
        ("machine", machine()),
        ("data", f"{SCALE.label}, generated in {generated_s:.0f} s"),
        (
            "method",
            f"refresh every {INTERVAL_S:g} s, engine census "
            + (f"every {args.census_every} refreshes" if args.census_every else "never")
            + f" in the window; {tool_name(wrk)}; "
            + (
                f"{args.pairs} interleaved pairs per share, figures are the medians of each"
                " side, ratios ours/reference with the min-max of the pair ratios"
                if args.reference
                else f"{args.pairs} runs per share, figures are their medians with the min-max"
            ),
        ),
    ]
    if not args.no_append:
        append_results("products at scale", details, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
