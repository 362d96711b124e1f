"""Small blocking helpers for driving local processes on loopback: a free port, a GET that
never raises, a poller with a deadline (never a fixed sleep), and a child process that
logs to a file and is always stopped.

Shared by the embedded PostgreSQL launcher, the demo, the benchmarks and the tests, so that
each starts and waits for its processes the same way.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

STOP_TIMEOUT_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout_s: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, raw body); status 0 when nothing answers. Bodies are not decoded."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except OSError:
        return 0, {}, b""


def poll_until(
    condition: Callable[[], T | None], *, what: str, timeout_s: float = 10.0, every_s: float = 0.05
) -> T:
    """Call ``condition`` until it returns something truthy and return that; after the
    deadline raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


class ManagedProcess:
    """A child process in its own session, logging to a file.

    Its own session keeps a terminal's Ctrl-C away from it: the owner stops it, in order,
    with SIGTERM (SIGKILL after ``STOP_TIMEOUT_S``).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> int | None:
        """Stop it if it still runs; its exit code."""
        if self.alive():
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode
