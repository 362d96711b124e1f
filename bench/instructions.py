"""``python -m bench.instructions``: CPU instructions per request of the exporter and of bare
aiohttp on the snapshot endpoints, counted by valgrind's callgrind.

Requests per second move with whatever else the machine runs; the instructions a server
executes for one request do not (to within a fraction of a percent), so this is the measure
to judge a change to the request path by while other work shares the cores. The throughput
ratios of record come from ``bench.edge`` on the machine alone.

Both servers run under callgrind, answering the same fleet (``bench.bare`` with the
exporter's own answers, like for like). For each endpoint a few hundred requests warm the
path, the counters are zeroed, then ``--requests`` identical requests (the platform key on
``/status`` and ``/metrics``) are sent over ``--clients`` keep-alive connections, one at a
time on each, and the instructions counted since the zero are divided by the requests.
``VALGRIND`` names the valgrind to run (by default the one on ``PATH``).

``/prometheus`` also carries its self-metrics, rendered at most once a second: under
callgrind a second holds far fewer requests than at full speed, so that render weighs more
per request here than in ``bench.edge``, and more the slower the run. ``/status`` and
``/metrics`` have no such part.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.generate import Scale, bench_key, generate
from bench.processes import ManagedProcess, fetch, start_bare, start_exporter, wait_for
from exporter.loopback import http_get
from exporter.pgcluster import EmbeddedPostgres, apply_schema

SCALE = Scale(10_000, 20_000, 20)
PATHS = ("/prometheus", "/status", "/metrics")
WARM_UP_REQUESTS = 400


def _send(host: str, port: int, request: bytes, count: int) -> None:
    """``count`` requests one after the other on one keep-alive connection; each answer is
    read to the end of its body (the servers answer with a ``Content-Length``)."""
    with socket.create_connection((host, port), timeout=60) as connection:
        pending = b""
        for _ in range(count):
            connection.sendall(request)
            while b"\r\n\r\n" not in pending:
                pending += _received(connection)
            head, _, pending = pending.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"answered {head.splitlines()[0]!r}")
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            if length is None:
                raise RuntimeError("an answer without a Content-Length")
            pending = _read_body(connection, pending, int(length.group(1)))


def _read_body(connection: socket.socket, pending: bytes, length: int) -> bytes:
    """Read until ``length`` body bytes have arrived; what follows them."""
    while len(pending) < length:
        pending += _received(connection)
    return pending[length:]


def _received(connection: socket.socket) -> bytes:
    chunk = connection.recv(1 << 16)
    if not chunk:
        raise ConnectionError("the server closed the connection")
    return chunk


def _load(port: int, request: bytes, requests: int, clients: int) -> None:
    """``requests`` requests spread over ``clients`` connections; a failed one fails all."""
    with ThreadPoolExecutor(clients) as pool:
        sent = [
            pool.submit(_send, "127.0.0.1", port, request, requests // clients)
            for _ in range(clients)
        ]
        for future in sent:
            future.result()


def _instructions(process: ManagedProcess, out_file: Path) -> int:
    """The instructions counted since the last zero, from a fresh dump of the process."""
    before = set(out_file.parent.glob(out_file.name + "*"))
    subprocess.run(
        ["callgrind_control", "--dump", str(process.pid)], check=True, capture_output=True
    )
    dumps = set(out_file.parent.glob(out_file.name + "*")) - before
    if len(dumps) != 1:
        raise RuntimeError(f"expected one new callgrind dump, found {sorted(dumps)}")
    text = dumps.pop().read_text()
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no instruction total in the callgrind dump")
    return int(match.group(1))


def _per_request(
    process: ManagedProcess,
    out_file: Path,
    port: int,
    path: str,
    key: str | None,
    *,
    requests: int,
    clients: int,
) -> float:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if key is not None:
        lines.append(f"X-Platform-Key: {key}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    _load(port, request, WARM_UP_REQUESTS, clients)
    subprocess.run(
        ["callgrind_control", "--zero", str(process.pid)], check=True, capture_output=True
    )
    requests = requests // clients * clients
    _load(port, request, requests, clients)
    return _instructions(process, out_file) / requests


def _callgrind(out_file: Path) -> list[str]:
    valgrind = os.environ.get("VALGRIND", "valgrind")
    return [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="per endpoint and server")
    parser.add_argument("--clients", type=int, default=4, help="keep-alive connections")
    parser.add_argument("--engines", type=int, default=SCALE.engines, help="fleet size")
    args = parser.parse_args(argv)
    key = bench_key(1)
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as temp, EmbeddedPostgres() as cluster:
        workdir = Path(temp)
        dsn = cluster.create_database("bench_instructions")
        apply_schema(dsn)
        generate(dsn, Scale(args.engines, 2 * args.engines, SCALE.products))
        ours_out, bare_out = workdir / "exporter.callgrind", workdir / "bare.callgrind"
        exporter, base = start_exporter(
            workdir, dsn, interval_s=3600, max_staleness_s=7200, wrapper=_callgrind(ours_out)
        )
        bare: ManagedProcess | None = None
        try:
            exporter.wait_counted(base, timeout_s=1800)
            headers = {"X-Platform-Key": key}
            wait_for(
                lambda: http_get(f"{base}/metrics", headers)[0] == 200,
                timeout_s=600,
                what="the audit history to be counted and published",
            )
            answers = {
                path: fetch(f"{base}{path}", headers if path != "/prometheus" else {})
                for path in PATHS
            }
            bare, bare_base = start_bare(workdir, answers, wrapper=_callgrind(bare_out))
            bare.wait_http(f"{bare_base}/prometheus", timeout_s=1800)
            print("| endpoint | exporter instructions/request | bare aiohttp | exporter / bare |")
            print("|---|---|---|---|")
            counts = {"requests": args.requests, "clients": args.clients}
            for path in PATHS:
                sent_key = key if path != "/prometheus" else None
                ours = _per_request(
                    exporter, ours_out, int(base.rsplit(":", 1)[1]), path, sent_key, **counts
                )
                theirs = _per_request(
                    bare, bare_out, int(bare_base.rsplit(":", 1)[1]), path, sent_key, **counts
                )
                cells = (f"`{path}`", f"{ours / 1000:.1f}k", f"{theirs / 1000:.1f}k")
                print("| " + " | ".join(cells) + f" | {ours / theirs:.3f} |", flush=True)
        finally:
            if bare is not None:
                bare.stop()
            exporter.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
