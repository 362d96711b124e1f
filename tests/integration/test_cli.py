"""The command line as an operator runs it: real processes, real PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2

from tests.support import canary
from tests.support.db import execute, exporter_sessions, insert_product
from tests.support.service import free_port, http_get, poll_until

KEY = "pk-sept-acme-" + "a" * 40


def _config(
    tmp_path: Path, dsn: str, port: int = 0, *, statement_timeout_s: float = 5, **extra: str
) -> Path:
    path = tmp_path / "exporter.yaml"
    lines = [
        "database:",
        f"  dsn: {json.dumps(dsn)}",
        f"  statement_timeout_s: {statement_timeout_s:g}",
        "listen:",
        "  host: 127.0.0.1",
        f"  port: {port}",
        "refresh:",
        "  interval_s: 0.5",
        "  max_staleness_s: 30",
        *extra.values(),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "FLEET_EXPORTER_DSN"},
    )


def test_check_passes_on_a_complete_database(fleet_db: Any, tmp_path: Path) -> None:
    result = _cli("check", "--config", str(_config(tmp_path, fleet_db.dsn)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert "FAIL" not in result.stdout


def test_check_reports_a_missing_recommended_index(fleet_db: Any, tmp_path: Path) -> None:
    execute(fleet_db.dsn, "DROP INDEX engine_fleet_engines_product_created")
    result = _cli("check", "--config", str(_config(tmp_path, fleet_db.dsn)))
    assert result.returncode == 1
    assert "FAIL index: engine_fleet_engines_product_created MISSING" in result.stdout


def test_check_reports_a_missing_column(fleet_db: Any, tmp_path: Path) -> None:
    execute(fleet_db.dsn, "ALTER TABLE engines DROP COLUMN last_health_at")
    result = _cli("check", "--config", str(_config(tmp_path, fleet_db.dsn)))
    assert result.returncode == 1
    assert "FAIL schema: engines lacks column(s) last_health_at" in result.stdout


def test_check_reports_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    dsn = f"postgresql://exporter:hunter2@127.0.0.1:{free_port()}/orchestrator"
    result = _cli("check", "--config", str(_config(tmp_path, dsn)))
    assert result.returncode == 1
    assert "FAIL database: not reachable" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_a_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("database:\n  dsn: postgresql://x:hunter2@h/db\nrefresh:\n  interval_s: -1\n")
    for command in ("serve", "check"):
        result = _cli(command, "--config", str(path))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "refresh.interval_s" in result.stderr
        assert "hunter2" not in result.stderr


def test_a_bad_web_config_file_stops_serve_and_check_with_one_line_naming_the_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "exporter.yaml"
    config.write_text("database:\n  dsn: postgresql://x:hunter2@127.0.0.1:1/db\n")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  min_version: X\n")
    for command in ("serve", "check"):
        result = _cli(command, "--config", str(config), "--web.config.file", str(web))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "tls_server_config.min_version" in result.stderr
    config.write_text(config.read_text() + "web:\n  config_file: web.yml\n")
    result = _cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "tls_server_config.min_version" in result.stderr


def _wait_ready(base: str, process: subprocess.Popen[str]) -> None:
    def ready() -> bool:
        assert process.poll() is None, "service exited before it became ready"
        return http_get(f"{base}/readyz")[0] == 200

    poll_until(ready, what="the service to become ready", timeout_s=30)


@contextlib.contextmanager
def _serving(
    config: Path, port: int, *, wait_ready: bool = True
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Run ``serve`` (until ready, unless told not to wait); on exit make sure it is gone
    and hand back its log lines."""
    logs: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            if wait_ready:
                _wait_ready(f"http://127.0.0.1:{port}", process)
            yield process, logs
        finally:
            if process.poll() is None:
                process.kill()
            _, stderr = process.communicate(timeout=10)
            logs.extend(stderr.splitlines())
            canary.observe("fleet-exporter serve log", stderr)


def test_serve_finishes_in_flight_requests_and_exits_cleanly_on_sigterm(
    fleet_db: Any, tmp_path: Path
) -> None:
    insert_product(fleet_db.dsn, slug="acme", api_key=KEY)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The blocked statement must outlive the wait for the listener to close, however slow
    # the machine: a statement timeout would answer it 503 instead.
    config = _config(tmp_path, fleet_db.dsn, port, statement_timeout_s=60)
    with _serving(config, port) as (process, logs):
        locker = psycopg2.connect(fleet_db.dsn)
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE engines IN ACCESS EXCLUSIVE MODE")
        answers: list[int] = []
        in_flight = threading.Thread(
            target=lambda: answers.append(http_get(f"{base}/engines", {"X-Platform-Key": KEY})[0])
        )
        in_flight.start()
        poll_until(
            lambda: (
                exporter_sessions(
                    fleet_db.dsn, "wait_event_type = 'Lock' AND query LIKE '%%LIMIT%%'"
                )
                == 1
            ),
            what="the request to block on the lock",
        )
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        poll_until(lambda: http_get(f"{base}/healthz")[0] == 0, what="the listener to close")
        locker.rollback()
        locker.close()
        in_flight.join(timeout=10)
        assert process.wait(timeout=10) == 0, "\n".join(logs)
        assert time.monotonic() - stopped_at < 5
        assert answers == [200]
    assert logs
    assert not any(KEY in line for line in logs)


def test_serve_logs_one_json_object_per_line(fleet_db: Any, tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, fleet_db.dsn, port, log="log:\n  format: json")
    with _serving(config, port) as (process, logs):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    events = [json.loads(line)["event"] for line in logs]
    assert "starting" in events
    assert "refresh_ok" in events


STRUCTURED_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warning|error) ")


def test_a_statement_timeout_is_one_structured_line_and_nothing_else_on_stderr(
    fleet_db: Any, tmp_path: Path
) -> None:
    """aiopg reports a statement the server cancelled to the event loop too; the service's
    only word on it is the refresh's own line."""
    execute(
        fleet_db.dsn,
        "ALTER TABLE products RENAME TO products_stored;"
        " CREATE VIEW products AS SELECT p.* FROM products_stored AS p, (SELECT pg_sleep(1)) AS s",
    )
    port = free_port()
    config = _config(tmp_path, fleet_db.dsn, port)
    config.write_text(
        config.read_text().replace("statement_timeout_s: 5", "statement_timeout_s: 0.3")
    )
    base = f"http://127.0.0.1:{port}"

    def failed_refreshes() -> float | None:
        status, body = http_get(f"{base}/prometheus")
        if status != 200:
            return None
        match = re.search(rb'refresh_errors_total\{stage="products"\} (\S+)', body)
        return float(match.group(1)) if match and float(match.group(1)) >= 2 else None

    with _serving(config, port, wait_ready=False) as (process, lines):
        poll_until(failed_refreshes, what="two refreshes cancelled by the server", timeout_s=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    stderr = "\n".join(lines)
    assert process.returncode == 0, stderr
    assert [line for line in lines if not STRUCTURED_LINE.match(line)] == []
    failures = [line for line in lines if " refresh_failed " in line]
    assert len(failures) >= 2
    assert all("stage=products" in line and "statement_timeout" in line for line in failures)
    assert not any("never retrieved" in line or "canceling statement" in line for line in lines)
