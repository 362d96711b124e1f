"""``python -m bench.edge``: what the hardened HTTP edge costs on the snapshot endpoints.

One fleet is generated in a throwaway PostgreSQL; ``fleet-exporter serve`` answers
``/prometheus``, ``/status`` and ``/metrics``, each side by side with a bare aiohttp process
(``bench.bare``) in interleaved rounds (``bench.pairs``), first in plain HTTP, then both over
TLS (the exporter by its web configuration file, the bare server with the same certificate),
loaded by wrk with keep-alive connections.

The baseline is like for like: the bare server answers each path with the very body and
response headers the exporter sent for it (fetched once before the load; only ``Date``,
``Server``, ``Content-Length`` and ``Connection``, which aiohttp writes itself, are left
out), and wrk sends both the very same request, ``X-Platform-Key`` included. What the ratio
measures is then what the exporter adds on top of aiohttp, not aiohttp parsing a longer
request and writing longer headers for one side only. The previous definition, a bare server
sent no key and answering the same bodies with their content type alone, is measured as a
third server in the same rounds and printed in a table of its own, so figures recorded
before the change can be read against this one.

Beside the throughput each side's CPU time per request is read from ``/proc`` (user and
system time of the server process over the run, divided by the requests it answered): on a
shared machine a busy neighbour lowers both sides' requests per second, but much less what
one request costs. The tables are printed and, unless ``--no-append``, added to
``bench/RESULTS.md``; ``--plain-only`` skips the TLS half (for quick looks, not for the
record).
"""

from __future__ import annotations

import argparse
import functools
import ssl
import statistics
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trustme
import yaml

from bench.generate import Scale, bench_key, generate
from bench.load import LoadResult, ensure_wrk, run_load, tool_name
from bench.pairs import PAIRS, PairedRatio, paired_ratio, run_rounds
from bench.processes import ManagedProcess, cpu_s, fetch, start_bare, start_exporter, wait_for
from bench.report import load_average, machine, machine_load_text
from exporter.loopback import http_get
from exporter.pgcluster import EmbeddedPostgres, apply_schema

SCALE = Scale(100_000, 200_000, 20)
CONNECTIONS = 16
LOAD_SECONDS = 2
PATHS = ("/prometheus", "/status", "/metrics")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass(frozen=True)
class ServedRun:
    """One load run against one server: the load figures and the server's CPU per request."""

    load: LoadResult
    cpu_us_per_request: float

    @property
    def rps(self) -> float:
        return self.load.rps


@dataclass(frozen=True)
class Server:
    """A server under load: its base URL and its process id (read for CPU time)."""

    base: str
    pid: int


@dataclass(frozen=True)
class EndpointFigures:
    """One endpoint's rounds: the exporter against the like-for-like bare server, and against
    the bare server of the previous definition (same bodies only, no key sent)."""

    like_for_like: PairedRatio[ServedRun]
    body_only: PairedRatio[ServedRun]


def _rps(run: ServedRun) -> float:
    return run.rps


def _compare(
    wrk: str | None, ours: Server, like: Server, body_only: Server, key: dict[str, str]
) -> dict[str, EndpointFigures]:
    """Each path on the three servers, in interleaved rounds."""

    def load(server: Server, path: str, headers: dict[str, str] | None) -> ServedRun:
        before = cpu_s(server.pid)
        result = run_load(
            wrk,
            f"{server.base}{path}",
            seconds=LOAD_SECONDS,
            connections=CONNECTIONS,
            headers=headers,
        )
        used_s = cpu_s(server.pid) - before
        return ServedRun(result, used_s / max(1, result.requests) * 1e6)

    figures = {}
    for path in PATHS:
        headers = key if path != "/prometheus" else None
        mine, theirs, previous = run_rounds(
            [
                functools.partial(load, ours, path, headers),
                functools.partial(load, like, path, headers),
                functools.partial(load, body_only, path, None),
            ]
        )
        figures[path] = EndpointFigures(
            paired_ratio(mine, theirs, _rps), paired_ratio(mine, previous, _rps)
        )
        print(
            f"{ours.base}{path}: {figures[path].like_for_like.text()}"
            f" (body only: {figures[path].body_only.text()})",
            flush=True,
        )
    return figures


def _certificate(workdir: Path) -> tuple[Path, Path]:
    """A trustme certificate for 127.0.0.1, trusted by this process's urllib from now on
    (the readiness checks and the fetched bodies go through it; wrk does not verify)."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = workdir / "server.crt", workdir / "server.key"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    urllib.request.install_opener(
        urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    )
    return cert, key


def _measure(workdir: Path, dsn: str, wrk: str | None, *, tls: bool) -> dict[str, EndpointFigures]:
    web_config = certificate = None
    if tls:
        certificate = _certificate(workdir)
        web_config = workdir / "web.yml"
        cert, key_file = (str(path) for path in certificate)
        web_config.write_text(
            yaml.safe_dump({"tls_server_config": {"cert_file": cert, "key_file": key_file}})
        )
    exporter, base = start_exporter(
        workdir, dsn, interval_s=3600, max_staleness_s=7200, web_config=web_config
    )
    bare: list[ManagedProcess] = []
    key = {"X-Platform-Key": bench_key(1)}
    try:
        exporter.wait_counted(base, timeout_s=600)
        wait_for(
            lambda: http_get(f"{base}/metrics", key)[0] == 200,
            timeout_s=600,
            what="the audit history to be counted and published",
        )
        answers = {
            path: fetch(f"{base}{path}", key if path != "/prometheus" else {}) for path in PATHS
        }
        bases = []
        for served in (answers, {path: answer.body_only() for path, answer in answers.items()}):
            process, bare_base = start_bare(workdir, served, certificate)
            bare.append(process)
            process.wait_http(f"{bare_base}/prometheus", timeout_s=30)
            bases.append(Server(bare_base, process.pid))
        return _compare(wrk, Server(base, exporter.pid), *bases, key)
    finally:
        for process in bare:
            process.stop()
        exporter.stop()


def _cpu_median(runs: tuple[ServedRun, ...]) -> str:
    return f"{statistics.median(run.cpu_us_per_request for run in runs):.1f}"


def _cpu_ratio(pairs: PairedRatio[ServedRun]) -> PairedRatio[ServedRun]:
    """Bare's CPU per request over the exporter's, pair by pair: like the throughput ratio,
    1.0 is parity and lower is costlier."""
    return paired_ratio(pairs.ours, pairs.reference, lambda run: 1 / run.cpu_us_per_request)


def _table(
    figures: dict[str, dict[str, EndpointFigures]],
    header: tuple[str, ...],
    cells: Callable[[EndpointFigures], list[str]],
) -> str:
    """One row per transport and endpoint: the two, then ``cells`` of its figures."""
    rows = [
        "| transport | endpoint | " + " | ".join(header) + " |",
        "|---|---|" + "---|" * len(header),
    ]
    for transport, by_path in figures.items():
        for path in PATHS:
            row = [transport, f"`{path}`", *cells(by_path[path])]
            rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


LIKE_FOR_LIKE_HEADER = (
    "exporter req/s",
    "bare aiohttp req/s",
    f"throughput ratio (median of {PAIRS} pairs, min-max)",
    "exporter CPU µs/request",
    "bare CPU µs/request",
    "CPU ratio bare/exporter (min-max)",
)


def _like_for_like_cells(figures: EndpointFigures) -> list[str]:
    """Requests per second of the median pair, the pair ratio, and CPU per request (medians
    of each side's runs)."""
    pairs = figures.like_for_like
    ours, bare = pairs.median_pair
    return [
        f"{ours.rps:,.0f}",
        f"{bare.rps:,.0f}",
        pairs.text(),
        _cpu_median(pairs.ours),
        _cpu_median(pairs.reference),
        _cpu_ratio(pairs).text(),
    ]


BODY_ONLY_HEADER = (
    "body-only bare req/s",
    f"throughput ratio (median of {PAIRS} pairs, min-max)",
    "body-only bare CPU µs/request",
    "CPU ratio bare/exporter (min-max)",
)


def _body_only_cells(figures: EndpointFigures) -> list[str]:
    """The same exporter runs against the previous baseline, for reading older sections."""
    pairs = figures.body_only
    return [
        f"{pairs.median_pair[1].rps:,.0f}",
        pairs.text(),
        _cpu_median(pairs.reference),
        _cpu_ratio(pairs).text(),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-append", action="store_true", help="print only")
    parser.add_argument(
        "--plain-only", action="store_true", help="plain HTTP only (implies --no-append)"
    )
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as temp, EmbeddedPostgres() as cluster:
        workdir = Path(temp)
        dsn = cluster.create_database("bench_edge")
        apply_schema(dsn)
        generate(dsn, SCALE)
        figures = {"plain": _measure(workdir, dsn, wrk, tls=False)}
        if not args.plain_only:
            # TLS second: its certificate is trusted by urllib from then on.
            figures["TLS"] = _measure(workdir, dsn, wrk, tls=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            "",
            f"## HTTP edge: snapshot endpoints against bare aiohttp, {' and '.join(figures)}"
            f" ({when})",
            "",
            f"Machine: {machine()}; {machine_load_text(load_before, load_average())}."
            f" Load: {tool_name(wrk)}, {CONNECTIONS} keep-alive"
            f" connections, {LOAD_SECONDS} s per run, {PAIRS} interleaved rounds of the three"
            f" servers. Fleet: {SCALE.label}."
            f" Command: `python -m bench.edge{' --plain-only' if args.plain_only else ''}`.",
            "",
            "Against bare aiohttp answering the same request with the same body and headers:",
            "",
            _table(figures, LIKE_FOR_LIKE_HEADER, _like_for_like_cells),
            "",
            "The same exporter runs against the previous baseline (same bodies, content type"
            " only, no key sent):",
            "",
            _table(figures, BODY_ONLY_HEADER, _body_only_cells),
            "",
        ]
    )
    print(section)
    if not (args.no_append or args.plain_only):
        with RESULTS.open("a", encoding="utf-8") as results:
            results.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
