"""Processes the benchmarks start and measure: the exporter, the bare baseline, the peer.

Each runs as its own process on a free loopback port, logs to a file, is polled (never slept
on) until it answers, is measured through ``/proc`` (resident memory) and is always stopped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import yaml

from exporter import loopback
from exporter.loopback import free_port, http_get, poll_until

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll every 0.1 s until ``condition`` holds; ``TimeoutError`` after the deadline."""
    poll_until(condition, what=what, timeout_s=timeout_s, every_s=0.1)


def proc_status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM) in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_s(pid: int) -> float:
    """User and system CPU seconds the process has used, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


AIOHTTP_OWN_HEADERS = frozenset({"date", "server", "content-length", "connection"})
"""Response headers aiohttp writes itself on every answer, the bare baseline's included."""


@dataclass(frozen=True)
class Answer:
    """A 200 answer as the bare baseline repeats it: the body and the response headers the
    server chose, in order (those aiohttp writes itself left out)."""

    body: bytes
    headers: tuple[tuple[str, str], ...]

    @property
    def content_type(self) -> str:
        return dict(self.headers).get("Content-Type", "application/octet-stream")

    def body_only(self) -> Answer:
        """The same body with its content type alone: the baseline before it carried every
        header the exporter sends."""
        return Answer(self.body, (("Content-Type", self.content_type),))


def fetch(url: str, headers: dict[str, str]) -> Answer:
    """The answer to a GET that must answer 200."""
    status, response_headers, body = http_get(url, headers)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}: {body[:300]!r}")
    chosen = tuple(
        (name, value)
        for name, value in response_headers.items()
        if name.lower() not in AIOHTTP_OWN_HEADERS
    )
    return Answer(body, chosen)


class ManagedProcess(loopback.ManagedProcess):
    """A child process with a log file, measured through ``/proc`` and awaited over HTTP;
    ``stop`` sends SIGTERM, then SIGKILL if it must."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(name, command, log_path, cwd=cwd, env={**os.environ, **(env or {})})

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def wait_http(self, url: str, *, timeout_s: float, status: int = 200) -> None:
        def answered() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            return http_get(url, timeout_s=5)[0] == status

        wait_for(answered, timeout_s=timeout_s, what=f"{self.name} at {url}")

    def wait_counted(self, base: str, *, timeout_s: float) -> None:
        """Until the exporter at ``base`` is ready with its audit history counted: fleet state
        is served at once, lifetime figures (``/metrics``, the counters) only after that."""

        def counted() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            status, _, body = http_get(f"{base}/readyz", timeout_s=5)
            return status == 200 and json.loads(body).get("audit") == "counted"

        wait_for(counted, timeout_s=timeout_s, what=f"{self.name} to count the audit log")

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_exporter(
    workdir: Path,
    dsn: str,
    *,
    interval_s: float = 15.0,
    max_staleness_s: float = 120.0,
    statement_timeout_s: float = 5.0,
    pool_max: int = 4,
    refresh: dict[str, float] | None = None,
    log: dict[str, str] | None = None,
    state: dict[str, object] | None = None,
    package_root: Path | None = None,
    web_config: Path | None = None,
    wrapper: Sequence[str] = (),
) -> tuple[ManagedProcess, str]:
    """``fleet-exporter serve`` on a free port, with a config written for it; (process, base).

    ``refresh`` and ``log`` add settings to those sections, ``state`` is the state section;
    ``package_root`` runs the copy of the ``exporter`` package found there instead of this
    tree's; ``web_config`` is its web configuration file (with TLS in it, the base is
    https); ``wrapper`` runs it under another program (valgrind)."""
    port = free_port()
    config: dict[str, dict[str, object]] = {
        "database": {
            "dsn": dsn,
            "pool_max": pool_max,
            "statement_timeout_s": statement_timeout_s,
            "connect_timeout_s": 2,
        },
        "listen": {"host": "127.0.0.1", "port": port},
        "refresh": {
            "interval_s": interval_s,
            "max_staleness_s": max_staleness_s,
            **(refresh or {}),
        },
        "log": {"level": "info", "format": "text", **(log or {})},
    }
    if web_config is not None:
        config["web"] = {"config_file": str(web_config)}
    if state is not None:
        config["state"] = state
    config_path = workdir / f"exporter-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    process = ManagedProcess(
        "fleet-exporter",
        [*wrapper, sys.executable, "-m", "exporter", "serve", "--config", str(config_path)],
        workdir / f"exporter-{port}.log",
        env={"PYTHONPATH": str(package_root)} if package_root else None,
        cwd=package_root,
    )
    scheme = "https" if web_config is not None else "http"
    return process, f"{scheme}://127.0.0.1:{port}"


def start_bare(
    workdir: Path,
    answers: dict[str, Answer],
    tls: tuple[Path, Path] | None = None,
    wrapper: Sequence[str] = (),
) -> tuple[ManagedProcess, str]:
    """The bare aiohttp baseline answering each path with its ``Answer`` (body and
    headers), over TLS with ``tls`` (certificate, key), under ``wrapper`` if given;
    (process, base)."""
    port = free_port()
    manifest: dict[str, dict[str, object]] = {}
    for index, (path, answer) in enumerate(answers.items()):
        body_path = workdir / f"bare-{port}-{index}.body"
        body_path.write_bytes(answer.body)
        manifest[path] = {
            "file": str(body_path),
            "headers": [list(pair) for pair in answer.headers],
        }
    manifest_path = workdir / f"bare-{port}.json"
    manifest_path.write_text(json.dumps(manifest))
    command = [
        *wrapper,
        sys.executable,
        "-m",
        "bench.bare",
        "--port",
        str(port),
        str(manifest_path),
    ]
    if tls is not None:
        command += ["--cert", str(tls[0]), "--key", str(tls[1])]
    process = ManagedProcess(
        "bare aiohttp", command, workdir / f"bare-{port}.log", env={"PYTHONPATH": str(REPO_ROOT)}
    )
    scheme = "https" if tls is not None else "http"
    return process, f"{scheme}://127.0.0.1:{port}"
