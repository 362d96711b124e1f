"""The operations pack against the real thing: Prometheus scraping the service over a moving
simulated fleet, evaluating the shipped rules, and Alertmanager delivering to a webhook.

Everything runs as real processes on loopback. Prometheus and Alertmanager run through
``exporter.demo.stack``, as in the demo: the shipped files with only targets, rule file
paths, webhook URLs and timings rewritten, ``for:`` shortened so alerts fire within the test.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trustme
import yaml

from exporter.demo.stack import (
    ALERTMANAGER_COMMANDS,
    PROMETHEUS_COMMANDS,
    Commands,
    OpsStack,
    Ports,
    Timing,
)
from exporter.pgcluster import EmbeddedPostgres, PostgresNotFound, apply_schema
from tests.support import canary
from tests.support.db import fetch_value, insert_engine, insert_product
from tests.support.opspack import (
    EXPORTER_JOB,
    find_tool,
    load_dashboard,
    load_rules,
    panel_queries,
    rules_of,
    substitute_grafana_variables,
)
from tests.support.service import free_port, http_get, poll_until


@dataclass
class Webhook:
    """A minimal Alertmanager webhook receiver recording every notification by path."""

    port: int
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def serve(self) -> ThreadingHTTPServer:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass
class Stack:
    dsn: str
    prometheus_port: int
    webhook: Webhook
    rules: dict[str, Any]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        status, body = http_get(url)
        assert status == 200, f"{expr}: {body.decode(errors='replace')}"
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result


SCRAPE_USER = "prometheus"
SCRAPE_PASSWORD = canary.secret("live-stack-scrape-password-" + "s" * 12)


def _secure_the_exporter(tmp: Path) -> tuple[Path, dict[str, Any], Path]:
    """TLS with a trustme certificate and basic auth by a web configuration file: the file,
    the exporter job's settings that let Prometheus scrape it, and the CA file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp / "exporter.crt")
    cert.private_key_pem.write_to_path(tmp / "exporter.key")
    ca.cert_pem.write_to_path(tmp / "exporter-ca.crt")
    (tmp / "scrape-password").write_text(SCRAPE_PASSWORD)
    hashed = bcrypt.hashpw(SCRAPE_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web_config = tmp / "web.yml"
    web_config.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": "exporter.crt", "key_file": "exporter.key"},
                "basic_auth_users": {SCRAPE_USER: hashed},
            }
        )
    )
    scrape = {
        "scheme": "https",
        "tls_config": {"ca_file": str(tmp / "exporter-ca.crt")},
        "basic_auth": {"username": SCRAPE_USER, "password_file": str(tmp / "scrape-password")},
    }
    return web_config, scrape, tmp / "exporter-ca.crt"


def _https_status(url: str, ca_file: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


LIVE_TIMING = Timing(scrape_interval_s=1.0, speedup=300.0)
"""A five-minute ``for:`` takes one second, so alerts fire within the test."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    commands = Commands(
        prometheus=find_tool(*PROMETHEUS_COMMANDS), alertmanager=find_tool(*ALERTMANAGER_COMMANDS)
    )
    tmp = tmp_path_factory.mktemp("stack")
    try:
        server = EmbeddedPostgres()
    except PostgresNotFound as error:
        if os.environ.get("CI") == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))
    processes: list[subprocess.Popen[bytes]] = []
    webhook_server: ThreadingHTTPServer | None = None
    with server:
        dsn = server.create_database("orchestrator")
        apply_schema(dsn)
        exporter_port, prometheus_port, alertmanager_port, webhook_port = (
            free_port() for _ in range(4)
        )
        webhook = Webhook(webhook_port)
        webhook_server = webhook.serve()
        web_config, exporter_scrape, exporter_ca = _secure_the_exporter(tmp)
        ops = OpsStack(
            commands=commands,
            ports=Ports(
                exporter=exporter_port, prometheus=prometheus_port, alertmanager=alertmanager_port
            ),
            receiver_url=f"http://127.0.0.1:{webhook_port}",
            timing=LIVE_TIMING,
            exporter_scrape=exporter_scrape,
        )
        exporter_config = tmp / "exporter.yaml"
        exporter_config.write_text(
            yaml.safe_dump(
                {
                    "database": {"dsn": dsn},
                    "listen": {"host": "127.0.0.1", "port": exporter_port},
                    "refresh": {"interval_s": 1, "max_staleness_s": 30},
                    "web": {"config_file": str(web_config)},
                }
            )
        )
        logs = tmp / "logs"
        logs.mkdir()

        def spawn(name: str, command: list[str]) -> None:
            log = (logs / f"{name}.log").open("wb")
            processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
            )
            log.close()

        try:
            spawn(
                "simulator",
                [sys.executable, "-m", "exporter", "demo", "--dsn", dsn, "--engines", "120"],
            )
            poll_until(
                lambda: fetch_value(dsn, "SELECT count(*) FROM engines") >= 100,
                timeout_s=60,
                what="the simulator to seed the fleet",
            )
            spawn(
                "exporter",
                [sys.executable, "-m", "exporter", "serve", "--config", str(exporter_config)],
            )
            ops.start()
            try:
                poll_until(
                    lambda: (
                        _https_status(f"https://127.0.0.1:{exporter_port}/readyz", exporter_ca)
                        == 200
                    ),
                    timeout_s=60,
                    what="the exporter to be ready",
                )
                ops.wait_ready(timeout_s=60)
                yield Stack(dsn, prometheus_port, webhook, load_rules())
            except BaseException:
                print(ops.logs())
                raise
            finally:
                ops.stop()
        except BaseException:
            for log in sorted(logs.iterdir()):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if webhook_server is not None:
                webhook_server.shutdown()
                webhook_server.server_close()
            for log in sorted(logs.iterdir()):
                canary.observe(f"live stack {log.name}", log.read_bytes())


def test_prometheus_scrapes_the_exporter_with_the_shipped_job(stack: Stack) -> None:
    result = poll_until(
        lambda: stack.query(f'up{{job="{EXPORTER_JOB}"}} == 1'),
        timeout_s=30,
        what="a successful scrape",
    )
    assert result


def test_every_dashboard_panel_expression_returns_data(stack: Stack) -> None:
    poll_until(
        lambda: stack.query("count(engine_fleet_engines) > 0"), timeout_s=30, what="fleet data"
    )
    queries = panel_queries(load_dashboard())
    assert len(queries) >= 10
    for query in queries:
        expr = substitute_grafana_variables(query.expr)
        poll_until(
            lambda expr=expr: stack.query(expr),
            timeout_s=45,
            what=f"data for {query.where}: {expr}",
        )


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    records = [rule["record"] for rule in rules_of(stack.rules, "record")]
    assert records, "alerts.yml defines no recording rule"
    for record in records:
        poll_until(
            lambda record=record: stack.query(record),
            timeout_s=45,
            what=f"recording rule {record}",
        )


def _notification(stack: Stack, alertname: str, product: str) -> dict[str, Any] | None:
    for path, payload in list(stack.webhook.received):
        for alert in payload.get("alerts", []):
            labels = alert["labels"]
            if labels.get("product") == product and labels.get("alertname") == alertname:
                return {"path": path, **alert}
    return None


def test_a_critical_fleet_pages_through_alertmanager(stack: Stack) -> None:
    product = insert_product(stack.dsn, slug="blast", api_key="pk-sept-blast-" + "z" * 40)
    for i in range(10):
        insert_engine(
            stack.dsn, product_id=product, user_id=f"u{i}", status="failed" if i < 4 else "running"
        )

    alert = poll_until(
        lambda: _notification(stack, "EngineFleetCritical", "blast"),
        timeout_s=90,
        what="the critical alert webhook",
    )
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == "critical"
    assert alert["path"] == "/pager"
    annotations = alert["annotations"]
    assert "blast" in annotations["summary"] + annotations["description"]
    assert annotations["runbook_url"].endswith("/EngineFleetCritical.md")


def test_a_stalled_health_loop_pages_through_alertmanager(stack: Stack) -> None:
    product = insert_product(stack.dsn, slug="stalled", api_key="pk-sept-stalled-" + "s" * 40)
    for i in range(5):
        insert_engine(
            stack.dsn,
            product_id=product,
            user_id=f"u{i}",
            status="running",
            last_health_at=datetime.now(UTC) - timedelta(minutes=10),
        )

    alert = poll_until(
        lambda: _notification(stack, "EngineFleetHealthLoopStalled", "stalled"),
        timeout_s=90,
        what="the health-loop alert webhook",
    )
    assert alert["status"] == "firing"
    assert alert["path"] == "/pager"
    assert alert["annotations"]["runbook_url"].endswith("/EngineFleetHealthLoopStalled.md")


def test_the_demo_product_near_its_quota_raises_the_quota_alert(stack: Stack) -> None:
    firing = poll_until(
        lambda: stack.query(
            'ALERTS{alertname="EngineFleetNearQuota", alertstate="firing", product="initech"}'
        ),
        timeout_s=90,
        what="EngineFleetNearQuota for the demo's initech",
    )
    assert firing
    others = stack.query('product:engine_fleet_quota_usage:ratio{product=~"acme|globex"} >= 0.9')
    assert others == []
