"""The operations pack live on loopback: a real Prometheus and Alertmanager run from the
shipped configuration files, for ``fleet-exporter demo`` and the live end-to-end test.

The shipped files are read at start and rewritten only where a local run must differ:
every target on 127.0.0.1, rule files by absolute path, every receiver a webhook to a local
receiver, and the timings (scrape and evaluation interval, ``for:``, Alertmanager's group
waits) shortened by one factor so that alerts fire while someone watches. Everything else
(expressions, labels, annotations, routes, inhibitions) is what production runs.
"""

from __future__ import annotations

import copy
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter.loopback import ManagedProcess, free_port, http_get

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
"""The repository's ``config/``: the demo runs from a checkout, beside the package."""
PROMETHEUS_CONFIG = CONFIG_DIR / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = CONFIG_DIR / "alertmanager" / "alertmanager.yml"

EXPORTER_JOB = "engine-fleet-exporter"
PROMETHEUS_COMMANDS = ("prometheus",)
ALERTMANAGER_COMMANDS = ("prometheus-alertmanager", "alertmanager")
"""Debian names the Alertmanager binary after its package; upstream calls it alertmanager."""

LOOPBACK = "127.0.0.1"


class OpsPackError(RuntimeError):
    """The shipped files are missing or cannot be run locally; the message is one line."""


class StackFailed(RuntimeError):
    """A process of the stack exited or did not become ready; the message has its log tail."""


_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``5m``, ``1h30m`` or ``500ms``."""
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(part.group() for part in parts) != text:
        raise OpsPackError(f"{text!r} is not a Prometheus duration")
    return sum(int(part.group(1)) * _UNIT_S[part.group(2)] for part in parts)


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for ``seconds``, to the millisecond (at least 1 ms)."""
    milliseconds = max(1, round(seconds * 1000))
    if milliseconds % 1000:
        return f"{milliseconds}ms"
    return f"{milliseconds // 1000}s"


@dataclass(frozen=True)
class Timing:
    """How fast the local stack runs."""

    scrape_interval_s: float
    """Prometheus' scrape and rule evaluation interval."""
    speedup: float
    """Every ``for:`` and Alertmanager's group waits and repeat intervals are divided by it."""

    def shorten(self, duration: str) -> str:
        return format_duration(parse_duration(duration) / self.speedup)


DEMO_TIMING = Timing(scrape_interval_s=5.0, speedup=10.0)
"""The demo: a scrape per exporter refresh, and a five-minute ``for:`` takes 30 s."""


@dataclass(frozen=True)
class Ports:
    exporter: int
    prometheus: int
    alertmanager: int | None
    """None: the stack runs without Alertmanager."""


def load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        where = (
            path.relative_to(CONFIG_DIR.parent) if path.is_relative_to(CONFIG_DIR.parent) else path
        )
        raise OpsPackError(
            f"the operations pack's {where} is missing: Prometheus and Alertmanager run only"
            " from a checkout of the repository (make demo)"
        ) from None


def local_rules(shipped: Mapping[str, Any], timing: Timing) -> dict[str, Any]:
    """The rule file with every ``for:`` (and group interval) shortened; rules unchanged."""
    rules: dict[str, Any] = copy.deepcopy(dict(shipped))
    for group in rules.get("groups", []):
        if "interval" in group:
            group["interval"] = format_duration(timing.scrape_interval_s)
        for rule in group.get("rules", []):
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    rule[key] = timing.shorten(rule[key])
    return rules


def local_prometheus_config(
    shipped: Mapping[str, Any],
    *,
    ports: Ports,
    rule_files: Sequence[Path],
    timing: Timing,
    exporter_scrape: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``prometheus.yml`` with its jobs pointed at the local processes; ``exporter_scrape``
    (e.g. ``scheme``, ``tls_config``, ``basic_auth``) is set on the exporter's job.

    Every shipped job must be one the stack runs: a job added to the shipped file without a
    local target is an error here, not a job the demo silently leaves out.
    """
    config: dict[str, Any] = copy.deepcopy(dict(shipped))
    interval = format_duration(timing.scrape_interval_s)
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": interval,
        "evaluation_interval": interval,
    }
    config["rule_files"] = [str(path) for path in rule_files]
    targets = {EXPORTER_JOB: ports.exporter, "prometheus": ports.prometheus}
    if ports.alertmanager is None:
        config.pop("alerting", None)
    else:
        targets["alertmanager"] = ports.alertmanager
        config["alerting"] = {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{LOOPBACK}:{ports.alertmanager}"]}]}
            ]
        }
    jobs = []
    for job in config.get("scrape_configs", []):
        name = job.get("job_name")
        if name == "alertmanager" and ports.alertmanager is None:
            continue
        if name not in targets:
            raise OpsPackError(f"prometheus.yml: job {name!r} has no local target in the stack")
        job["static_configs"] = [{"targets": [f"{LOOPBACK}:{targets[name]}"]}]
        job.pop("authorization", None)
        if name == EXPORTER_JOB:
            job.update(exporter_scrape or {})
        jobs.append(job)
    if not any(job["job_name"] == EXPORTER_JOB for job in jobs):
        raise OpsPackError(f"prometheus.yml: no {EXPORTER_JOB} job")
    config["scrape_configs"] = jobs
    return config


_ROUTE_TIMERS = ("group_wait", "group_interval", "repeat_interval")


def _shorten_route(route: dict[str, Any], timing: Timing) -> None:
    for key in _ROUTE_TIMERS:
        if key in route:
            route[key] = timing.shorten(route[key])
    for child in route.get("routes", []):
        _shorten_route(child, timing)


def local_alertmanager_config(
    shipped: Mapping[str, Any], *, receiver_url: str, timing: Timing
) -> dict[str, Any]:
    """``alertmanager.yml`` with the shipped routing, every receiver a webhook to
    ``receiver_url/<receiver name>`` (nothing leaves the machine), timers shortened."""
    config: dict[str, Any] = copy.deepcopy(dict(shipped))
    _shorten_route(config["route"], timing)
    config["receivers"] = [
        {
            "name": receiver["name"],
            "webhook_configs": [
                {"url": f"{receiver_url}/{receiver['name']}", "send_resolved": True}
            ],
        }
        for receiver in config.get("receivers", [])
    ]
    return config


def find_command(names: Sequence[str]) -> str | None:
    """The first of ``names`` on PATH."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(frozen=True)
class Commands:
    """The Prometheus and Alertmanager binaries found on this machine."""

    prometheus: str | None
    alertmanager: str | None

    @classmethod
    def find(cls) -> Commands:
        return cls(find_command(PROMETHEUS_COMMANDS), find_command(ALERTMANAGER_COMMANDS))

    def missing(self) -> list[tuple[str, str]]:
        """(program, Debian package) of each one not found."""
        found = [
            (self.prometheus, "Prometheus", "prometheus"),
            (self.alertmanager, "Alertmanager", "prometheus-alertmanager"),
        ]
        return [(program, package) for path, program, package in found if path is None]

    def missing_line(self) -> str | None:
        """What runs without which binary and what to install, in one line; None: nothing."""
        missing = self.missing()
        if not missing:
            return None
        programs = " and ".join(program for program, _ in missing)
        packages = " ".join(package for _, package in missing)
        without = "Prometheus and Alertmanager" if self.prometheus is None else "Alertmanager"
        plural = "s" if len(missing) > 1 else ""
        return (
            f"{programs} not installed: the demo runs without {without}"
            f" (install the Debian package{plural} {packages}, or run make demo as root)"
        )


def port_or_free(preferred: int) -> int:
    """``preferred`` when nothing listens on it on loopback, else any free port (0: any)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, preferred))
        except OSError:
            return free_port(LOOPBACK)
        port: int = probe.getsockname()[1]
        return port


class OpsStack:
    """Prometheus, and Alertmanager when given, in one temp dir; stopped and removed together.

    ``start`` writes the local configs and spawns the processes; ``ready`` says whether both
    answer (and raises ``StackFailed`` with the log tail if one exited); ``stop`` ends them
    and removes the directory with their data, configs and logs.
    """

    def __init__(
        self,
        *,
        commands: Commands,
        ports: Ports,
        receiver_url: str,
        timing: Timing,
        prometheus_config: Path = PROMETHEUS_CONFIG,
        alertmanager_config: Path = ALERTMANAGER_CONFIG,
        exporter_scrape: Mapping[str, Any] | None = None,
    ) -> None:
        if commands.prometheus is None:
            raise OpsPackError("the stack needs Prometheus")
        if ports.alertmanager is not None and commands.alertmanager is None:
            raise OpsPackError("an Alertmanager port without an Alertmanager binary")
        self._commands = commands
        self.ports = ports
        self._receiver_url = receiver_url
        self._timing = timing
        self._prometheus_config = prometheus_config
        self._alertmanager_config = alertmanager_config
        self._exporter_scrape = exporter_scrape
        self._root: Path | None = None
        self.processes: list[ManagedProcess] = []

    @property
    def prometheus_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.prometheus}"

    @property
    def alertmanager_url(self) -> str | None:
        if self.ports.alertmanager is None:
            return None
        return f"http://{LOOPBACK}:{self.ports.alertmanager}"

    def write_configs(self, root: Path) -> tuple[Path, Path | None]:
        shipped = load_yaml(self._prometheus_config)
        rule_files = []
        for name in shipped.get("rule_files", []):
            source = self._prometheus_config.parent / name
            target = root / Path(name).name
            target.write_text(yaml.safe_dump(local_rules(load_yaml(source), self._timing)))
            rule_files.append(target)
        prometheus = root / "prometheus.yml"
        prometheus.write_text(
            yaml.safe_dump(
                local_prometheus_config(
                    shipped,
                    ports=self.ports,
                    rule_files=rule_files,
                    timing=self._timing,
                    exporter_scrape=self._exporter_scrape,
                )
            )
        )
        if self.ports.alertmanager is None:
            return prometheus, None
        alertmanager = root / "alertmanager.yml"
        alertmanager.write_text(
            yaml.safe_dump(
                local_alertmanager_config(
                    load_yaml(self._alertmanager_config),
                    receiver_url=self._receiver_url,
                    timing=self._timing,
                )
            )
        )
        return prometheus, alertmanager

    def start(self) -> None:
        """Write the configs and spawn the processes; on any failure nothing is left."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="fleet-ops-"))
        prometheus_config, alertmanager_config = self.write_configs(self._root)
        if alertmanager_config is not None:
            assert self._commands.alertmanager is not None
            self._spawn(
                "alertmanager",
                self._commands.alertmanager,
                f"--config.file={alertmanager_config}",
                f"--storage.path={self._root / 'alertmanager-data'}",
                f"--web.listen-address={LOOPBACK}:{self.ports.alertmanager}",
                "--cluster.listen-address=",
            )
        assert self._commands.prometheus is not None
        self._spawn(
            "prometheus",
            self._commands.prometheus,
            f"--config.file={prometheus_config}",
            f"--storage.tsdb.path={self._root / 'prometheus-data'}",
            f"--web.listen-address={LOOPBACK}:{self.ports.prometheus}",
        )

    def _spawn(self, name: str, *command: str) -> None:
        assert self._root is not None
        self.processes.append(
            ManagedProcess(name, command, self._root / f"{name}.log", cwd=self._root)
        )

    def ready(self) -> bool:
        urls = [self.prometheus_url, self.alertmanager_url]
        for process in self.processes:
            if not process.alive():
                raise StackFailed(f"{process.name} exited:\n{process.log_tail()}")
        return all(
            http_get(f"{url}/-/ready", timeout_s=2)[0] == 200 for url in urls if url is not None
        )

    def wait_ready(
        self, timeout_s: float = 60.0, *, cancelled: Callable[[], bool] = lambda: False
    ) -> None:
        """Poll ``ready`` until it holds, ``cancelled()`` is true, or the deadline fails it."""
        deadline = time.monotonic() + timeout_s
        while not self.ready() and not cancelled():
            if time.monotonic() > deadline:
                raise StackFailed(f"not ready after {timeout_s:g} s:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(3000)}" for p in self.processes)

    def stop(self) -> None:
        """Prometheus first (it stops sending alerts), then Alertmanager; then the files."""
        for process in reversed(self.processes):
            process.stop()
        self.processes = []
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
