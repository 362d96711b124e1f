"""Helpers to build settings and run the service in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from exporter import loopback
from exporter.config import Settings, settings_from_mapping
from exporter.loopback import free_port, poll_until
from tests.support import canary

__all__ = ["QUIET_INTERVAL_S", "free_port", "http_get", "make_settings", "poll_until", "wait_until"]

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
    """Poll ``condition`` until it holds; fail with ``what`` after the deadline. The blocking
    twin, for tests that drive real processes, is ``exporter.loopback.poll_until``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A blocking GET for tests that talk to real processes: (status, body); (0, b"") when
    nothing answers."""
    status, _, body = loopback.http_get(url, headers, timeout_s=20)
    canary.observe(f"GET {url}", body)
    return status, body
