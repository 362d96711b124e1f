"""The edge's pure rules: how a parser rejection is answered and how often it is logged."""

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, InvalidHeader, LineTooLong

from exporter.edge import (
    MAX_HEADER_VALUE,
    MAX_REQUEST_LINE,
    RateLimitedCounts,
    classify_rejection,
)

SECRET = "pk-sept-never-echoed-0123456789"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (LineTooLong(SECRET.encode(), MAX_REQUEST_LINE), 414, "URI_TOO_LONG"),
        (LineTooLong(SECRET.encode(), MAX_HEADER_VALUE + 64), 431, "HEADERS_TOO_LARGE"),
        (BadHttpMessage("Too many headers received"), 431, "HEADERS_TOO_LARGE"),
        (InvalidHeader(SECRET.encode()), 400, "BAD_REQUEST"),
        (BadStatusLine(SECRET), 400, "BAD_REQUEST"),
        (BadHttpMessage(f"Invalid header value char: {SECRET}"), 400, "BAD_REQUEST"),
        (None, 400, "BAD_REQUEST"),
    ],
)
def test_rejections_map_to_a_status_and_a_message_quoting_nothing(
    error: Exception | None, status: int, code: str
) -> None:
    rejection = classify_rejection(error)
    assert (rejection.status, rejection.code) == (status, code)
    assert SECRET not in rejection.message


def test_one_line_per_kind_per_interval_carrying_the_count() -> None:
    now = [100.0]
    counts = RateLimitedCounts(10.0, clock=lambda: now[0])
    assert counts.count("BadStatusLine") == 1
    assert counts.count("InvalidHeader") == 1
    for _ in range(5):
        now[0] += 1
        assert counts.count("BadStatusLine") is None
    now[0] = 110.0
    assert counts.count("BadStatusLine") == 6
    assert counts.count("BadStatusLine") is None
    now[0] = 125.0
    assert counts.count("BadStatusLine") == 2
    assert counts.count("InvalidHeader") == 1
