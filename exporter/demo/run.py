"""``fleet-exporter demo``: the whole service on a throwaway database with a moving fleet.

Without ``--dsn``: start an embedded PostgreSQL, create the schema, seed the demo products
and fleet, serve the exporter on it while the simulator keeps the fleet moving, and remove
everything on Ctrl-C. With ``--dsn``: seed that database if needed and run only the
simulator (docker-compose runs the exporter as its own service).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from exporter.app import create_app
from exporter.config import Settings, settings_from_mapping
from exporter.demo.seed import DemoProduct, seed_demo
from exporter.demo.simulator import FleetSimulator
from exporter.edge import serving
from exporter.logs import configure_logging, log_event
from exporter.pgcluster import EmbeddedPostgres, PostgresNotFound, apply_schema

logger = logging.getLogger("exporter.demo")

DEMO_REFRESH_INTERVAL_S = 5.0
"""Shorter than the production default so the demo visibly moves between two calls."""


def demo_settings(dsn: str, host: str, port: int) -> Settings:
    return settings_from_mapping(
        {
            "database": {"dsn": dsn},
            "listen": {"host": host, "port": port},
            "refresh": {"interval_s": DEMO_REFRESH_INTERVAL_S, "max_staleness_s": 60},
        },
        environ={},
    )


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


def _key_lines(products: tuple[DemoProduct, ...]) -> list[str]:
    """The fixed demo keys, printed on stdout (never logged) so a reader can call the API."""
    lines = ["  demo platform keys (header X-Platform-Key):"]
    return lines + [f"    {p.slug:<8} {p.api_key}" for p in products]


def _print_banner(host: str, port: int, products: tuple[DemoProduct, ...]) -> None:
    base = f"http://{host}:{port}"
    lines = [
        "",
        "engine-fleet-exporter demo is running (Ctrl-C stops it and removes the database)",
        "",
        f"  landing page   {base}/",
        f"  Prometheus     {base}/prometheus",
        f"  fleet API      {base}/engines  {base}/status  {base}/metrics",
        "",
        *_key_lines(products),
        "",
        f"  try: curl -s -H 'X-Platform-Key: {products[0].api_key}' {base}/status",
        "",
    ]
    print("\n".join(lines), flush=True)


async def _simulate_only(dsn: str, engines: int, incident: str | None) -> None:
    stop = asyncio.Event()
    _install_stop_signals(stop)
    products = await seed_demo(dsn, engines=engines)
    simulator = FleetSimulator(dsn, products=products)
    if incident:
        simulator.start_incident(incident)
    print(
        "\n".join(
            ["", "engine-fleet-exporter demo simulator is running", *_key_lines(products), ""]
        ),
        flush=True,
    )
    log_event(logger, logging.INFO, "simulator_started", products=len(products))
    await simulator.run(stop)


async def _serve_demo(dsn: str, host: str, port: int, engines: int, incident: str | None) -> None:
    stop = asyncio.Event()
    _install_stop_signals(stop)
    products = await seed_demo(dsn, engines=engines)
    settings = demo_settings(dsn, host, port)
    async with serving(create_app(settings), settings, shutdown_timeout_s=2.0):
        simulator = FleetSimulator(dsn, products=products)
        if incident:
            simulator.start_incident(incident)
        simulation = asyncio.create_task(simulator.run(stop), name="fleet-simulator")
        _print_banner(host, port, products)
        await stop.wait()
        await simulation


def run_demo(*, port: int, host: str, engines: int, dsn: str | None, incident: str | None) -> int:
    configure_logging(demo_settings("postgresql://demo", host, port).log)
    if dsn is not None:
        asyncio.run(_simulate_only(dsn, engines, incident))
        return 0
    try:
        with EmbeddedPostgres() as server:
            database_dsn = server.create_database("orchestrator")
            apply_schema(database_dsn)
            log_event(logger, logging.INFO, "embedded_postgres_started", port=server.port)
            asyncio.run(_serve_demo(database_dsn, host, port, engines, incident))
    except PostgresNotFound as error:
        print(f"fleet-exporter demo: {error}", file=sys.stderr)
        return 1
    return 0
