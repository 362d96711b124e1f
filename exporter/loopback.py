"""Small blocking helpers for driving local processes on loopback: a free port, a GET that
never raises, and a poller with a deadline (never a fixed sleep).

Shared by the embedded PostgreSQL launcher, the demo, the benchmarks and the tests, so that
each starts and waits for its processes the same way.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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
