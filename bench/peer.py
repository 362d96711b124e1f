"""The closest peer, query-exporter, installed in its own venv and run on the same database.

``bench/query-exporter.yaml`` makes it export the same per-status engine counts and lifetime
per-action audit counts as the fleet exporter, refreshed on the same 15 s interval. It is
installed from PyPI with ``psycopg2-binary`` into ``bench/.venv-peer`` (git-ignored) the first
time the benchmark needs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.processes import ManagedProcess, wait_for
from exporter.loopback import free_port, http_get

BENCH_DIR = Path(__file__).resolve().parent
PEER_VENV = BENCH_DIR / ".venv-peer"
PEER_CONFIG = BENCH_DIR / "query-exporter.yaml"
PEER_REQUIREMENTS = ("query-exporter>=5,<6", "psycopg2-binary>=2.9,<3")
AUDIT_QUERY_MARK = "%fleet_lifecycle_events%"
"""LIKE pattern that finds the peer's audit query in pg_stat_statements (one call per cycle)."""


class PeerUnavailable(RuntimeError):
    """query-exporter could not be installed here."""


def ensure_peer() -> Path:
    """The query-exporter executable, installing it on first use."""
    executable = PEER_VENV / "bin" / "query-exporter"
    if executable.is_file():
        return executable
    steps = (
        [sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
        [str(PEER_VENV / "bin" / "pip"), "install", "--quiet", *PEER_REQUIREMENTS],
    )
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PeerUnavailable(
                f"installing query-exporter failed: {result.stderr.strip()[-600:]}"
            )
    return executable


def peer_version(executable: Path) -> str:
    result = subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip().split()[-1] if result.stdout.strip() else "unknown"


def sqlalchemy_dsn(host: str, port: int, user: str, dbname: str) -> str:
    return f"postgresql+psycopg2://{user}@{host}:{port}/{dbname}"


def start_peer(executable: Path, workdir: Path, dsn: str) -> tuple[ManagedProcess, str]:
    """query-exporter on a free port, serving ``/metrics``; (process, metrics URL)."""
    port = free_port()
    process = ManagedProcess(
        "query-exporter",
        [
            str(executable),
            "--config",
            str(PEER_CONFIG),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        workdir / f"query-exporter-{port}.log",
        env={"QE_DSN": dsn},
    )
    return process, f"http://127.0.0.1:{port}/metrics"


def wait_first_cycle(process: ManagedProcess, url: str, *, timeout_s: float) -> None:
    """Until both queries have run once and their series are exposed."""

    def exported() -> bool:
        if not process.alive():
            raise RuntimeError(f"query-exporter exited:\n{process.log_tail()}")
        status, _, body = http_get(url, timeout_s=5)
        return (
            status == 200
            and b"\nfleet_engines{" in body
            and b"\nfleet_lifecycle_events_total{" in body
        )

    wait_for(exported, timeout_s=timeout_s, what="query-exporter's first cycle")
