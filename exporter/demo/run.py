"""``fleet-exporter demo``: the whole service on a throwaway database with a moving fleet.

Without ``--dsn``: start an embedded PostgreSQL, create the schema, seed the demo products
and fleet, serve the exporter on it while the simulator keeps the fleet moving, and, when
they are installed, run a real Prometheus and Alertmanager from the shipped operations pack
over it (``stack``), with Alertmanager's notifications printed by a local receiver
(``receiver``). Ctrl-C stops every process and removes every file. With ``--dsn``: seed
that database if needed and run only the simulator (docker-compose runs the rest).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from exporter.app import create_app
from exporter.config import Settings, settings_from_mapping
from exporter.demo.model import DEMO_PRODUCTS, HEALTH_LOOP_INCIDENT
from exporter.demo.receiver import receiver_app
from exporter.demo.seed import DemoProduct, seed_demo
from exporter.demo.simulator import FleetSimulator
from exporter.demo.stack import (
    DEMO_TIMING,
    LOOPBACK,
    Commands,
    OpsPackError,
    OpsStack,
    Ports,
    StackFailed,
    port_or_free,
)
from exporter.edge import serving
from exporter.logs import configure_logging, log_event
from exporter.pgcluster import EmbeddedPostgres, PostgresNotFound, apply_schema

logger = logging.getLogger("exporter.demo")

DEMO_REFRESH_INTERVAL_S = 5.0
"""Shorter than the production default so the demo visibly moves between two calls."""

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
"""Their usual ports when free (else any free port); ``--port 0`` takes free ports for all."""
STACK_READY_TIMEOUT_S = 60.0
INCIDENT_DELAY_S = 10.0
"""A product's burst of failures strikes this long after start, once Prometheus has scraped
the calm fleet, so it shows as an increase and not as where the series begin (a stalled
health loop shows in a gauge and starts at once)."""
INCIDENTS = frozenset({*(p.slug for p in DEMO_PRODUCTS), HEALTH_LOOP_INCIDENT})


def demo_settings(dsn: str, host: str, port: int, checkpoint: Path | None = None) -> Settings:
    return settings_from_mapping(
        {
            "database": {"dsn": dsn},
            "listen": {"host": host, "port": port},
            "refresh": {"interval_s": DEMO_REFRESH_INTERVAL_S, "max_staleness_s": 60},
            "state": {"checkpoint_path": None if checkpoint is None else str(checkpoint)},
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


def _print_banner(
    base: str, products: tuple[DemoProduct, ...], ops: list[str], note: str | None
) -> None:
    lines = [
        "",
        "engine-fleet-exporter demo is running (Ctrl-C stops everything and removes its files)",
        "",
        f"  landing page   {base}/",
        f"  scrape         {base}/prometheus",
        f"  fleet API      {base}/engines  {base}/status  {base}/metrics",
        *ops,
        "",
        *_key_lines(products),
        "",
        f"  try: curl -s -H 'X-Platform-Key: {products[0].api_key}' {base}/status",
        "",
    ]
    if note:
        lines += [note, ""]
    print("\n".join(lines), flush=True)


def _print_notification(line: str) -> None:
    print(f"alertmanager -> {line}", flush=True)


async def _serve(cleanup: AsyncExitStack, app: web.Application, host: str, port: int) -> int:
    """Serve the demo's own ``app`` (not the exporter, which runs behind the edge) until
    ``cleanup`` closes; the port it listens on (``port`` 0: any)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    cleanup.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port, shutdown_timeout=2.0)
    await site.start()
    bound: int = runner.addresses[0][1]
    return bound


async def _start_ops_stack(
    cleanup: AsyncExitStack, stop: asyncio.Event, exporter_port: int, *, any_port: bool
) -> tuple[list[str], str | None]:
    """Prometheus and Alertmanager from the shipped files, when installed: the banner lines
    for them and a one-line note of what runs without them, if anything does."""
    commands = Commands.find()
    if commands.prometheus is None:
        return [], commands.missing_line()
    ports = Ports(
        exporter=exporter_port,
        prometheus=port_or_free(0 if any_port else PROMETHEUS_PORT),
        alertmanager=None,
    )
    receiver_url = ""
    if commands.alertmanager is not None:
        receiver_port = await _serve(cleanup, receiver_app(_print_notification), LOOPBACK, 0)
        receiver_url = f"http://{LOOPBACK}:{receiver_port}"
        ports = replace(ports, alertmanager=port_or_free(0 if any_port else ALERTMANAGER_PORT))
    stack = OpsStack(commands=commands, ports=ports, receiver_url=receiver_url, timing=DEMO_TIMING)
    try:
        stack.start()
        cleanup.push_async_callback(asyncio.to_thread, stack.stop)
        await asyncio.to_thread(stack.wait_ready, STACK_READY_TIMEOUT_S, cancelled=stop.is_set)
    except (OpsPackError, StackFailed, OSError) as error:
        await asyncio.to_thread(stack.stop)
        first, _, details = str(error).partition("\n")
        if details:
            print(details, file=sys.stderr)
        return [], f"Prometheus and Alertmanager are not running: {first}"
    graph = f"{stack.prometheus_url}/graph?g0.expr=engine_fleet_engines&g0.tab=0"
    lines = ["", f"  Prometheus     {graph}", f"                 {stack.prometheus_url}/alerts"]
    if stack.alertmanager_url is not None:
        lines.append(
            f"  Alertmanager   {stack.alertmanager_url}/  (notifications are printed below)"
        )
    return lines, commands.missing_line()


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


async def _serve_demo(
    dsn: str, host: str, port: int, engines: int, incident: str | None, checkpoint: Path
) -> None:
    stop = asyncio.Event()
    _install_stop_signals(stop)
    products = await seed_demo(dsn, engines=engines)
    settings = demo_settings(dsn, host, port, checkpoint)
    async with AsyncExitStack() as cleanup:
        site = await cleanup.enter_async_context(
            serving(create_app(settings), settings, shutdown_timeout_s=2.0)
        )
        exporter_port = site.port
        ops, note = await _start_ops_stack(cleanup, stop, exporter_port, any_port=port == 0)
        simulator = FleetSimulator(dsn, products=products)
        if incident == HEALTH_LOOP_INCIDENT:
            simulator.start_incident(incident)
        elif incident:
            asyncio.get_running_loop().call_later(
                INCIDENT_DELAY_S, simulator.start_incident, incident
            )
        simulation = asyncio.create_task(simulator.run(stop), name="fleet-simulator")
        _print_banner(f"http://{host}:{exporter_port}", products, ops, note)
        await stop.wait()
        await simulation


def run_demo(*, port: int, host: str, engines: int, dsn: str | None, incident: str | None) -> int:
    if incident is not None and incident not in INCIDENTS:
        known = ", ".join(p.slug for p in DEMO_PRODUCTS)
        print(
            f"fleet-exporter demo: unknown incident {incident!r}; known: {known}"
            f" (a burst of failures in that product) or {HEALTH_LOOP_INCIDENT}",
            file=sys.stderr,
        )
        return 2
    configure_logging(demo_settings("postgresql://demo", host, port).log)
    if dsn is not None:
        asyncio.run(_simulate_only(dsn, engines, incident))
        return 0
    try:
        with (
            EmbeddedPostgres() as server,
            tempfile.TemporaryDirectory(prefix="fleet-demo-state-") as state,
        ):
            database_dsn = server.create_database("orchestrator")
            apply_schema(database_dsn)
            log_event(logger, logging.INFO, "embedded_postgres_started", port=server.port)
            checkpoint = Path(state) / "audit-checkpoint.json"
            asyncio.run(_serve_demo(database_dsn, host, port, engines, incident, checkpoint))
    except PostgresNotFound as error:
        print(f"fleet-exporter demo: {error}", file=sys.stderr)
        return 1
    return 0
