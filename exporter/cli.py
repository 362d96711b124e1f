"""Command line: ``fleet-exporter serve | check | demo``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from exporter import __version__, queries
from exporter.app import create_app
from exporter.config import ConfigError, Settings, WebSettings, load_settings
from exporter.db import Database, DatabaseUnavailable
from exporter.edge import serving
from exporter.logs import configure_logging, log_event
from exporter.webconfig import load_web_config

logger = logging.getLogger("exporter.cli")

SHUTDOWN_TIMEOUT_S = 4.0
"""In-flight requests get this long after SIGTERM; the whole stop stays under 5 s."""


def _load(path: Path, web_config_file: Path | None) -> Settings | None:
    """The settings, the web configuration file of the command line in force, both checked;
    None after printing the one line that says what is wrong."""
    try:
        settings = load_settings(path)
        if web_config_file is not None:
            settings = dataclasses.replace(settings, web=WebSettings(web_config_file))
        if settings.web.config_file is not None:
            load_web_config(settings.web.config_file)
    except ConfigError as error:
        print(f"fleet-exporter: config error: {error}", file=sys.stderr)
        return None
    return settings


async def _serve_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serving(create_app(settings), settings, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S):
        await stop.wait()


def serve(settings: Settings) -> int:
    configure_logging(settings.log, secrets=settings.secrets)
    log_event(
        logger,
        logging.INFO,
        "starting",
        version=__version__,
        listen=f"{settings.listen.host}:{settings.listen.port}",
        database=settings.database.redacted_dsn,
        refresh_interval_s=settings.refresh.interval_s,
    )
    asyncio.run(_serve_until_signalled(settings))
    log_event(logger, logging.INFO, "stopped")
    return 0


def _replication_line(in_recovery: bool, lag_s: float, settings: Settings) -> tuple[bool, str]:
    if not in_recovery:
        return True, "database: primary (not in recovery)"
    limit = settings.refresh.max_staleness_s
    return (
        lag_s <= limit,
        f"database: hot standby, replication lag {lag_s:.1f} s (data counts as stale beyond"
        f" refresh.max_staleness_s, {limit:g} s)",
    )


async def run_checks(settings: Settings) -> list[tuple[bool, str]]:
    """Every check ``fleet-exporter check`` reports, as (passed, line)."""
    results: list[tuple[bool, str]] = [(True, "config: valid")]
    if settings.web.config_file is not None:
        web_config = load_web_config(settings.web.config_file)
        tls = f"TLS {web_config.tls.min_version}+" if web_config.tls else "no TLS"
        users = len(web_config.basic_auth_users)
        results.append((True, f"web config: valid ({tls}, {users} basic auth user(s))"))
    database = Database(settings.database)
    try:
        async with database.read_transaction() as tx:
            version = await queries.fetch_server_version(tx)
            results.append((True, f"database: reachable ({settings.database.redacted_dsn})"))
            results.append(
                (
                    version >= queries.MIN_SERVER_VERSION,
                    f"database: PostgreSQL server version {version // 10000} (13 or newer needed)",
                )
            )
            results.append(_replication_line(*await queries.fetch_replication(tx), settings))
            columns = await queries.fetch_schema_columns(tx, list(queries.REQUIRED_COLUMNS))
            for table, needed in queries.REQUIRED_COLUMNS.items():
                missing = [c for c in needed if (table, c) not in columns]
                if missing:
                    results.append((False, f"schema: {table} lacks column(s) {', '.join(missing)}"))
                else:
                    results.append((True, f"schema: {table} has every column the exporter reads"))
            wanted = queries.recommended_index_names()
            present = await queries.fetch_present_indexes(tx, wanted)
            for name in wanted:
                results.append(
                    (
                        name in present,
                        f"index: {name} "
                        + (
                            "present"
                            if name in present
                            else "MISSING (apply exporter/sql/indexes.sql)"
                        ),
                    )
                )
    except DatabaseUnavailable as error:
        results.append((False, f"database: not reachable: {error}"))
    finally:
        await database.close()
    return results


def check(settings: Settings) -> int:
    results = asyncio.run(run_checks(settings))
    for passed, line in results:
        print(f"{'ok  ' if passed else 'FAIL'} {line}")
    failed = sum(1 for passed, _ in results if not passed)
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 0 if not failed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-exporter",
        description="Fleet read API and Prometheus metrics for an engine orchestrator.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the service"),
        ("check", "validate config, database, schema and indexes; exit 0 only when all is well"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--config", type=Path, required=True, help="YAML configuration file")
        command.add_argument(
            "--web.config.file",
            dest="web_config_file",
            type=Path,
            help="Prometheus web configuration file (TLS, basic auth); overrides web.config_file",
        )
    demo = commands.add_parser(
        "demo",
        help="run the service on an embedded PostgreSQL with a simulated, moving fleet",
        description="Run the service on an embedded PostgreSQL with a simulated, moving fleet.",
    )
    demo.add_argument("--port", type=int, default=9480, help="HTTP port (default 9480)")
    demo.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    demo.add_argument("--engines", type=int, default=300, help="engines to seed (default 300)")
    demo.add_argument(
        "--dsn",
        help="run only the seeding and the simulator against this existing database",
    )
    demo.add_argument(
        "--incident",
        metavar="NAME",
        help="start with an incident: a demo product (acme, globex, initech) for a burst of"
        " failures there, or health-loop to stop probing acme's engines",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from exporter.demo.run import run_demo

        if args.engines < 1 or not 0 <= args.port <= 65535:
            print("fleet-exporter: --engines must be >= 1 and --port 0..65535", file=sys.stderr)
            return 2
        return run_demo(
            port=args.port,
            host=args.host,
            engines=args.engines,
            dsn=args.dsn,
            incident=args.incident,
        )
    settings = _load(args.config, args.web_config_file)
    if settings is None:
        return 2
    if args.command == "serve":
        return serve(settings)
    return check(settings)
