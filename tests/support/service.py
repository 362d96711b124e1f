"""Helpers to build settings and run the service in tests."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from exporter.config import Settings, settings_from_mapping

T = TypeVar("T")

QUIET_INTERVAL_S = 3600.0
"""A refresh interval long enough that a test drives every refresh after the first itself."""


def make_settings(dsn: str, **sections: dict[str, Any]) -> Settings:
    raw: dict[str, Any] = {
        "database": {"dsn": dsn, "statement_timeout_s": 2, "connect_timeout_s": 2},
        "listen": {"host": "127.0.0.1", "port": 0},
        "refresh": {"interval_s": QUIET_INTERVAL_S, "max_staleness_s": QUIET_INTERVAL_S * 2},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return settings_from_mapping(raw, environ={})


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def poll_until(
    condition: Callable[[], T | None], *, what: str, timeout_s: float = 10.0, every_s: float = 0.05
) -> T:
    """The blocking twin of ``wait_until``, for tests that drive real processes: call
    ``condition`` until it returns something truthy, return that, fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A blocking GET for tests that talk to real processes: (status, body); (0, b"") when
    nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""
