"""The query of ``GET /engines`` and its page cursor, as pure functions of plain values.

``parse_engines_query`` reads a query string into an ``EnginesQuery``, or raises the
``INVALID_PARAMETER`` error that names the parameter and what it must be. A full page's
``next`` link carries the last engine's position as a cursor (``encode_cursor``) whose
shape is ``CURSOR_PATTERN``: every string of that shape is a position, so a client (or the
OpenAPI document, which states the pattern) can tell a cursor by its shape alone. Links
made by earlier versions (URL-safe base64 of ``<ISO time>|<uuid>``) keep working.
Parameters other than ``ENGINES_PARAMETERS`` are refused: a misspelt filter
(``?stauts=failed``) must not silently list every engine.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from multidict import MultiMapping

from exporter.domain import ENGINE_STATES
from exporter.errors import ApiError, invalid_parameter
from exporter.queries import EnginePosition

LIMIT_RANGE = (1, 1000)
DEFAULT_LIMIT = 100
MAX_OFFSET = 2**31 - 1
MAX_CURSOR_LENGTH = 200
ENGINES_PARAMETERS = ("status", "limit", "offset", "after")
CURSOR_PATTERN = r"^(?:[0-9]{1,17}|[01][0-9]{17}|2[0-4][0-9]{16})\.[0-9a-f]{32}$"
"""Microseconds since 1970 (below 2.5e17: up to the year 9892, within what a datetime holds),
a dot, the engine's uuid as 32 hex digits."""
_CURSOR = re.compile(CURSOR_PATTERN)
_DIGITS = re.compile(r"[0-9]{1,10}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class EnginesQuery:
    """What a ``GET /engines`` request asks for: a status filter and one page."""

    status: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    after: EnginePosition | None = None

    def next_page(self, last: EnginePosition) -> dict[str, str]:
        """The query of the page after one that ended at ``last``: same filter and limit."""
        query = {"limit": str(self.limit), "after": encode_cursor(last)}
        if self.status is not None:
            query = {"status": self.status, **query}
        return query


def parse_engines_query(query: MultiMapping[str]) -> EnginesQuery:
    """The request's filter and page; ``ApiError`` (400) for the first parameter that is bad."""
    if any(name not in ENGINES_PARAMETERS for name in query):
        # The unknown name is not echoed: it could be anything, a key pasted by mistake.
        raise ApiError(
            400,
            "INVALID_PARAMETER",
            "Unknown query parameter; known: " + ", ".join(ENGINES_PARAMETERS) + ".",
        )
    status = _single(query, "status")
    if status is not None and status not in ENGINE_STATES:
        raise invalid_parameter("status", "one of " + ", ".join(ENGINE_STATES))
    limit = _integer(query, "limit", DEFAULT_LIMIT, *LIMIT_RANGE)
    offset = _integer(query, "offset", 0, 0, MAX_OFFSET)
    return EnginesQuery(status, limit, offset, _after(query))


def encode_cursor(position: EnginePosition) -> str:
    micros = (position.created_at - _EPOCH) // _MICROSECOND
    return f"{micros}.{uuid.UUID(position.engine_id).hex}"


def decode_cursor(cursor: str) -> EnginePosition:
    """The position a ``next`` link carries; ValueError for anything that is not one."""
    if _CURSOR.fullmatch(cursor):
        micros, engine_id = cursor.split(".")
        return EnginePosition(_EPOCH + int(micros) * _MICROSECOND, str(uuid.UUID(engine_id)))
    return _decode_base64_cursor(cursor)


def _decode_base64_cursor(cursor: str) -> EnginePosition:
    """A cursor of an earlier version, from a link handed out before an upgrade."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise ValueError("cursor too long")
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    created_at, engine_id = raw.split("|")
    moment = datetime.fromisoformat(created_at)
    if moment.tzinfo is None:
        raise ValueError("cursor time without zone")
    return EnginePosition(moment.astimezone(UTC), str(uuid.UUID(engine_id)))


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise invalid_parameter(name, "given once")
    return values[0] if values else None


def _integer(query: MultiMapping[str], name: str, default: int, low: int, high: int) -> int:
    raw = _single(query, name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise invalid_parameter(name, f"an integer from {low} to {high}")
    return int(raw)


def _after(query: MultiMapping[str]) -> EnginePosition | None:
    cursor = _single(query, "after")
    if cursor is None:
        return None
    if "offset" in query:
        raise invalid_parameter("after", "used without 'offset'")
    try:
        return decode_cursor(cursor)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_parameter("after", 'a cursor from a Link: rel="next" header') from error
