"""The HTTP edge as a hostile client meets it: raw bytes on a socket to the real service.

Requests the parser rejects get the envelope and quote nothing; they are logged at info,
once per kind per interval, without a traceback; the limits (head timeout, idle timeout,
connection cap) cut the clients they should while the others are served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.helpers import NO_EXTENSIONS

from exporter.api import REFRESHER
from exporter.app import create_app
from exporter.edge import serving
from tests.support import canary
from tests.support.db import insert_engine, insert_product
from tests.support.service import make_settings, wait_until

KEY = canary.secret("pk-sept-edge-" + "e" * 40)
TOKEN = canary.secret("edge-scrape-token-" + "t" * 24)


@dataclass(frozen=True)
class Answer:
    status_line: str
    status: int
    headers: dict[str, str]
    body: bytes

    def envelope_code(self) -> str:
        assert self.headers["content-type"] == "application/json; charset=utf-8"
        error = json.loads(self.body)["error"]
        assert set(error) == {"code", "message"}
        code: str = error["code"]
        return code


def _parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status_line, int(status_line.split()[1]), headers, body)


async def exchange(port: int, request: bytes, *, timeout_s: float = 10) -> Answer:
    """Send raw bytes, read until the service closes the connection, parse the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    canary.observe(f"raw answer on port {port}", raw)
    return _parse(raw)


def _get(target: str, *headers: str, line_end: bytes = b"\r\n") -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close"]
    return line_end.join(line.encode("latin-1") for line in lines) + line_end * 2


@dataclass(frozen=True)
class Service:
    port: int
    app: Any


@pytest.fixture
async def service(fleet_db: Any, request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    listen: dict[str, Any] = getattr(request, "param", {})
    product = insert_product(fleet_db.dsn, slug="acme", api_key=KEY)
    insert_engine(fleet_db.dsn, product_id=product, user_id="u-1", status="running")
    settings = make_settings(fleet_db.dsn, listen=listen)
    app = create_app(settings)
    async with serving(app, settings, shutdown_timeout_s=1.0) as site:
        assert await app[REFRESHER].refresh_once()
        yield Service(site.port, app)


NUL = "\x00"
PARSER_REJECTIONS = {
    "key with a NUL byte": (_get("/status", f"X-Platform-Key: {KEY}{NUL}"), 400, "BAD_REQUEST"),
    "bearer token with a NUL byte": (
        _get("/prometheus", f"Authorization: Bearer {TOKEN}{NUL}"),
        400,
        "BAD_REQUEST",
    ),
    "key padded past 8 KiB": (
        _get("/status", f"X-Platform-Key: {KEY}" + " x" * 5000),
        431,
        "HEADERS_TOO_LARGE",
    ),
    "space before the colon": (_get("/status", f"X-Platform-Key : {KEY}"), 400, "BAD_REQUEST"),
    "LF-only line ends": (
        _get("/status", f"X-Platform-Key: {KEY}", line_end=b"\n"),
        400,
        "BAD_REQUEST",
    ),
    "a 10,000-character key": (
        _get("/status", "X-Platform-Key: " + "k" * 10_000),
        431,
        "HEADERS_TOO_LARGE",
    ),
    "too many headers": (
        _get("/status", *(f"X-Filler-{i}: {KEY}" for i in range(150))),
        431,
        "HEADERS_TOO_LARGE",
    ),
    "a 10 KB URL": (_get("/engines?status=" + "r" * 10_000 + KEY), 414, "URI_TOO_LONG"),
    "bad request line": (f"{KEY}\r\n\r\n".encode(), 400, "BAD_REQUEST"),
    "Content-Length with Transfer-Encoding": (
        b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "BAD_REQUEST",
    ),
}


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"), PARSER_REJECTIONS.values(), ids=PARSER_REJECTIONS.keys()
)
async def test_a_request_the_parser_rejects_gets_the_envelope_and_quotes_nothing(
    service: Service,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    status: int,
    code: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await exchange(service.port, request_bytes)

    assert answer.status == status
    assert answer.envelope_code() == code
    for secret in (KEY, TOKEN, "kkkkkkkk", "rrrrrrrr"):
        assert secret.encode() not in answer.body
    [line] = [record for record in caplog.records if record.name.startswith(("exporter", "aio"))]
    assert (line.name, line.levelno, line.getMessage()) == (
        "exporter.http",
        logging.INFO,
        "request_rejected",
    )
    assert line.exc_info is None


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (_get("/status", "Expect: foo"), 417, "EXPECTATION_FAILED"),
        pytest.param(
            b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nConnection: close\r\n\r\n",
            404,
            "NOT_FOUND",
            # aiohttp's pure-Python parser holds a CONNECT as a tunnel and never routes it;
            # the connection then ends at the keep-alive timeout, having echoed nothing.
            marks=pytest.mark.skipif(NO_EXTENSIONS, reason="the C parser routes CONNECT"),
        ),
        (_get("//status"), 404, "NOT_FOUND"),
        (_get("/status%0A"), 404, "NOT_FOUND"),
        (_get("/%0Astatus"), 404, "NOT_FOUND"),
    ],
    ids=[
        "unknown expectation",
        "CONNECT",
        "a path the router reads as a host",
        "a line break at the end",
        "a line break at the start",
    ],
)
async def test_errors_raised_around_the_routes_use_the_envelope(
    service: Service, request_bytes: bytes, status: int, code: str
) -> None:
    answer = await exchange(service.port, request_bytes)
    assert answer.status == status
    assert answer.envelope_code() == code


@pytest.mark.parametrize("method", ["get", "FOO"])
async def test_a_method_that_is_not_get_is_refused_in_the_envelope(
    service: Service, method: str
) -> None:
    answer = await exchange(service.port, _get("/status").replace(b"GET", method.encode(), 1))
    # The C parser refuses both as 400; the pure-Python one reads "get" as GET (then the key
    # is missing) and lets "FOO" through to the routes (405). Either way: the envelope.
    assert (answer.status, answer.envelope_code()) in {
        (400, "BAD_REQUEST") if not NO_EXTENSIONS else (405, "METHOD_NOT_ALLOWED"),
        (400, "BAD_REQUEST") if not NO_EXTENSIONS else (401, "INVALID_PLATFORM_KEY"),
    }


async def test_rejections_of_one_kind_are_logged_once_with_a_count(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(20):
        answer = await exchange(service.port, _get("/status", f"X-Platform-Key: {KEY}{NUL}"))
        assert answer.status == 400
    await exchange(service.port, _get("/" + "a" * 9000))

    lines = [r for r in caplog.records if r.name.startswith(("exporter", "aiohttp"))]
    assert [(r.getMessage(), r.levelno) for r in lines] == [
        ("request_rejected", logging.INFO),
        ("request_rejected", logging.INFO),
    ]
    assert [r.exporter_fields["count"] for r in lines] == [1, 1]  # type: ignore[attr-defined]
    assert lines[0].exporter_fields["kind"] != lines[1].exporter_fields["kind"]  # type: ignore[attr-defined]


async def test_a_platform_key_of_8_kib_reaches_the_handler(service: Service) -> None:
    answer = await exchange(service.port, _get("/status", "X-Platform-Key: " + "k" * 8192))
    assert answer.status == 401
    assert answer.envelope_code() == "INVALID_PLATFORM_KEY"
    answer = await exchange(service.port, _get("/status", f"X-Platform-Key: {KEY}"))
    assert answer.status == 200
    assert json.loads(answer.body)["total"] == 1


async def test_the_keep_alive_answer_is_http_1_1_with_the_cache_headers(service: Service) -> None:
    answer = await exchange(service.port, _get("/status", f"X-Platform-Key: {KEY}"))
    assert answer.status_line.startswith("HTTP/1.1 200")
    assert answer.headers["cache-control"].startswith("private, max-age=")
    assert answer.headers["vary"] == "X-Platform-Key"


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_peer(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout_s) == b""
    except (ConnectionError, TimeoutError):
        return False


async def _status_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(_get("/healthz").replace(b"Connection: close", b"Connection: keep-alive"))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    answer = _parse(head)
    await reader.readexactly(int(answer.headers["content-length"]))
    return answer.status


@pytest.mark.parametrize("service", [{"header_timeout_s": 0.5}], indirect=True)
async def test_a_slow_client_is_cut_after_the_header_timeout_while_others_are_served(
    service: Service,
) -> None:
    reader, writer = await _open(service.port)
    writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    started = time.monotonic()
    served = await exchange(service.port, _get("/healthz"))
    assert served.status == 200
    writer.write(b"X-Slow: 1\r\n")
    await writer.drain()
    assert await _closed_by_peer(reader, timeout_s=5)
    assert 0.4 <= time.monotonic() - started < 3
    writer.close()


@pytest.mark.parametrize(
    "service", [{"header_timeout_s": 5, "keepalive_timeout_s": 0.5}], indirect=True
)
async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(service: Service) -> None:
    reader, writer = await _open(service.port)
    assert await _status_on(reader, writer) == 200
    started = time.monotonic()
    assert await _closed_by_peer(reader, timeout_s=5)
    assert time.monotonic() - started < 3
    writer.close()


@pytest.mark.parametrize("service", [{"max_connections": 3}], indirect=True)
async def test_the_connection_cap_holds_and_the_open_connections_are_served(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    held = [await _open(service.port) for _ in range(3)]
    for reader, writer in held:
        assert await _status_on(reader, writer) == 200
    extra_reader, extra_writer = await _open(service.port)
    assert await _closed_by_peer(extra_reader, timeout_s=5)
    extra_writer.close()
    for reader, writer in held:
        assert await _status_on(reader, writer) == 200
    assert "connection_refused" in [r.getMessage() for r in caplog.records]

    held[0][1].close()

    async def admitted() -> bool:
        reader, writer = await _open(service.port)
        try:
            return await _status_on(reader, writer) == 200
        except (ConnectionError, asyncio.IncompleteReadError):
            return False
        finally:
            writer.close()

    await wait_until(admitted, what="a new connection to be admitted once one closed")
    for _, writer in held[1:]:
        writer.close()


async def test_the_service_stops_promptly_whenever_it_is_stopped(fleet_db: Any) -> None:
    """Stopped at once, mid first refresh: on Python 3.11 a cancellation can be swallowed by
    asyncio.wait_for inside aiopg as a statement completes; the stop must still finish."""
    insert_product(fleet_db.dsn, slug="acme", api_key=KEY)
    settings = make_settings(fleet_db.dsn)
    for delay_s in (0, 0.001, 0.005, 0.01, 0.02, 0.05):
        started = time.monotonic()
        async with asyncio.timeout(10):
            async with serving(create_app(settings), settings, shutdown_timeout_s=1.0):
                await asyncio.sleep(delay_s)
        assert time.monotonic() - started < 5
