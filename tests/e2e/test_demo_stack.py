"""``fleet-exporter demo`` as a newcomer runs it: the real command, its printed URLs, Ctrl-C.

Each test starts the demo in its own session with its own ``TMPDIR`` (every temp dir the
demo makes lands there) and ends it the way a terminal does, SIGINT to the process group;
afterwards no process may still mention that directory and the directory must be empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.stack import ALERTMANAGER_COMMANDS, PROMETHEUS_COMMANDS
from tests.support.opspack import find_tool
from tests.support.service import http_get, poll_until

REPOSITORY = Path(__file__).resolve().parents[2]
STATUSES = {"provisioning", "running", "sleeping", "stopped", "failed", "destroying", "other"}
PRODUCTS = {"acme", "globex", "initech"}


class Demo:
    """One run of the demo command, its stdout collected line by line."""

    def __init__(self, *args: str, stderr: Path, path: str | None = None) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="demo-e2e-"))
        # As root the embedded PostgreSQL runs as the postgres user, inside this directory.
        self.tmpdir.chmod(0o755)
        self._stderr = stderr
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        if path is not None:
            env["PATH"] = path
        with stderr.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "exporter", "demo", "--port", "0", "--engines", "60", *args],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
                start_new_session=True,
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        stderr = self._stderr.read_text(errors="replace")
        return "\n".join(self.lines) + "\n--- stderr\n" + stderr[-4000:]

    def wait_for_line(self, pattern: str, timeout_s: float = 90.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.process.poll() is None, f"the demo exited:\n{self.output()}"
            return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

        return poll_until(found, timeout_s=timeout_s, what=f"a line matching {pattern!r}")

    def banner(self) -> str:
        self.wait_for_line(r"try: curl")
        return "\n".join(self.lines)

    def url(self, label: str) -> str | None:
        match = re.search(rf"^  {label} +(http://127\.0\.0\.1:\d+)", self.banner(), re.MULTILINE)
        return match.group(1) if match else None

    def ctrl_c(self) -> int:
        """SIGINT to the whole foreground group, as a terminal sends it; the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        return code

    def leftover_processes(self) -> list[str]:
        mark = str(self.tmpdir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if mark in cmdline:
                found.append(entry.name + ": " + cmdline.replace(b"\0", b" ").decode())
        return found

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def demo_runs() -> Iterator[list[Demo]]:
    runs: list[Demo] = []
    yield runs
    for run in runs:
        run.close()


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def _assert_stopped_and_removed(demo: Demo) -> None:
    code = demo.ctrl_c()
    assert code == 0, demo.output()
    assert demo.leftover_processes() == []
    assert list(demo.tmpdir.iterdir()) == [], "the demo left files behind"


def _path_with(tmp_path: Path, *commands: str) -> str:
    """A PATH holding only ``commands`` (and runuser, which the embedded PostgreSQL needs
    as root): the machine's other tools are not installed, as far as the demo can tell."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in (*commands, "runuser"):
        found = shutil.which(name)
        if found:
            (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def test_demo_runs_prometheus_and_pages_the_incident_through_alertmanager(
    demo_runs: list[Demo], tmp_path: Path
) -> None:
    find_tool(*PROMETHEUS_COMMANDS)
    find_tool(*ALERTMANAGER_COMMANDS)
    demo = Demo("--incident", "acme", stderr=tmp_path / "demo.log")
    demo_runs.append(demo)
    prometheus = demo.url("Prometheus")
    alertmanager = demo.url("Alertmanager")
    assert prometheus, demo.output()
    assert alertmanager, demo.output()
    assert f"{prometheus}/alerts" in demo.banner()

    def fleet_series() -> list[dict[str, Any]] | None:
        result = _query(prometheus, "engine_fleet_engines")
        return result if len(result) == len(PRODUCTS) * len(STATUSES) else None

    series = poll_until(fleet_series, timeout_s=60, what="engine_fleet_engines in Prometheus")
    assert {s["metric"]["product"] for s in series} == PRODUCTS
    assert {s["metric"]["status"] for s in series} == STATUSES
    running = sum(float(s["value"][1]) for s in series if s["metric"]["status"] == "running")
    assert running > 0

    line = demo.wait_for_line(
        r"^alertmanager -> pager: FIRING EngineFleetCritical product=acme severity=critical:",
        timeout_s=150,
    )
    assert "acme" in line.string
    status, body = http_get(f"{alertmanager}/api/v2/alerts")
    assert status == 200
    critical = [
        alert["labels"]
        for alert in json.loads(body)
        if alert["labels"]["alertname"] == "EngineFleetCritical"
    ]
    assert {labels["product"] for labels in critical} == {"acme"}
    # The incident strikes after Prometheus has scraped the calm fleet: it is an increase.
    burst = (
        'increase(engine_fleet_lifecycle_events_total{product="acme",action="health_failed"}[5m])'
    )
    assert float(_query(prometheus, burst)[0]["value"][1]) > 0
    assert not [line for line in demo.lines if "not installed" in line]

    _assert_stopped_and_removed(demo)
    assert http_get(f"{prometheus}/-/ready")[0] == 0
    assert http_get(f"{alertmanager}/-/ready")[0] == 0


@pytest.mark.parametrize(
    ("installed", "note"),
    [
        (
            PROMETHEUS_COMMANDS,
            "Alertmanager not installed: the demo runs without Alertmanager"
            " (install the Debian package prometheus-alertmanager, or run make demo as root)",
        ),
        (
            (),
            "Prometheus and Alertmanager not installed: the demo runs without Prometheus and"
            " Alertmanager (install the Debian packages prometheus prometheus-alertmanager,"
            " or run make demo as root)",
        ),
    ],
    ids=["without-alertmanager", "without-both"],
)
def test_demo_runs_without_what_is_not_installed_and_says_what_to_install(
    demo_runs: list[Demo], tmp_path: Path, installed: tuple[str, ...], note: str
) -> None:
    if installed:
        find_tool(*installed)
    demo = Demo(stderr=tmp_path / "demo.log", path=_path_with(tmp_path, *installed))
    demo_runs.append(demo)
    exporter = demo.url("landing page")
    assert exporter, demo.output()
    assert demo.url("Alertmanager") is None
    assert [line for line in demo.lines if "not installed" in line] == [note]
    poll_until(lambda: http_get(f"{exporter}/readyz")[0] == 200, timeout_s=60, what="the exporter")
    prometheus = demo.url("Prometheus")
    assert (prometheus is not None) == bool(installed)
    if prometheus is not None:
        poll_until(
            lambda: _query(prometheus, "engine_fleet_engines"),
            timeout_s=60,
            what="engine_fleet_engines in Prometheus",
        )
    _assert_stopped_and_removed(demo)


def test_an_unknown_incident_is_refused_before_anything_starts(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "demo", "--port", "0", "--incident", "acmee"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "fleet-exporter demo: unknown incident 'acmee'; known: acme, globex, initech"
        " (a burst of failures in that product) or health-loop"
    ]
    assert result.stdout == ""
    assert list(temp.iterdir()) == []


def _as_unprivileged(command: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


@pytest.mark.parametrize(
    ("optional", "code", "says"),
    [(True, 0, ""), (False, 1, "missing system packages: prometheus prometheus-alertmanager")],
)
def test_make_demo_asks_for_the_ops_stack_but_does_not_require_it_without_root(
    optional: bool, code: int, says: str
) -> None:
    # Outside pytest's private temp tree, so that the unprivileged user can reach the tools.
    shared = Path(tempfile.mkdtemp(prefix="ensure-e2e-"))
    shared.chmod(0o755)
    try:
        path = _path_with(shared, "id", "tr", "sort", "ls")
        result = _ensure_ops_packages(path, optional)
    finally:
        shutil.rmtree(shared)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(says) if says else result.stderr == ""
    makefile = (REPOSITORY / "Makefile").read_text()
    assert re.search(r"^demo: .*sysdeps-ops", makefile, re.MULTILINE)
    assert "ensure-system-packages.sh --optional prometheus alertmanager" in makefile


def _ensure_ops_packages(path: str, optional: bool) -> subprocess.CompletedProcess[str]:
    script = REPOSITORY / "tools" / "ensure-system-packages.sh"
    flags = ["--optional"] if optional else []
    return subprocess.run(
        _as_unprivileged(["/bin/sh", str(script), *flags, "prometheus", "alertmanager"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": path},
    )
