"""``GET /engines`` query parsing and its page cursor, without a database or a server."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from exporter.domain import ENGINE_STATES
from exporter.errors import ApiError
from exporter.paging import (
    CURSOR_PATTERN,
    DEFAULT_LIMIT,
    MAX_CURSOR_LENGTH,
    MAX_OFFSET,
    EnginesQuery,
    decode_cursor,
    encode_cursor,
    parse_engines_query,
)
from exporter.queries import EnginePosition

ENGINE = "3f2c8a4e-1b7d-4c55-9a0e-6d1f2b3c4d5e"
POSITION = EnginePosition(datetime(2025, 3, 1, 12, 0, 0, 250, tzinfo=UTC), ENGINE)
CURSOR = encode_cursor(POSITION)
STATES = ", ".join(ENGINE_STATES)


def query(*pairs: tuple[str, str]) -> MultiDict[str]:
    return MultiDict(pairs)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_the_cursor_is_the_utc_microseconds_and_the_engine_id_in_hex() -> None:
    """Links handed out by one replica must keep working on another and after an upgrade."""
    assert CURSOR == "1740830400000250.3f2c8a4e1b7d4c559a0e6d1f2b3c4d5e"
    assert re.fullmatch(CURSOR_PATTERN, CURSOR)


def test_a_cursor_of_the_earlier_base64_form_still_decodes() -> None:
    legacy = (
        "MjAyNS0wMy0wMVQxMjowMDowMC4wMDAyNTArMDA6MDB8"
        "M2YyYzhhNGUtMWI3ZC00YzU1LTlhMGUtNmQxZjJiM2M0ZDVl"
    )
    assert decode_cursor(legacy) == POSITION


@given(
    micros=st.from_regex(r"[0-9]{1,17}|[01][0-9]{17}|2[0-4][0-9]{16}", fullmatch=True),
    engine_id=st.uuids(),
)
def test_every_string_of_the_documented_shape_is_a_position(micros: str, engine_id: object) -> None:
    cursor = f"{micros}.{engine_id.hex}"  # type: ignore[attr-defined]
    assert re.fullmatch(CURSOR_PATTERN, cursor)
    assert encode_cursor(decode_cursor(cursor)) == f"{int(micros)}.{engine_id.hex}"  # type: ignore[attr-defined]


@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9890, 1, 1),
        timezones=st.timezones(),
        allow_imaginary=False,
    ),
    engine_id=st.uuids(),
)
def test_a_cursor_decodes_to_the_same_instant_and_engine(
    moment: datetime, engine_id: object
) -> None:
    cursor = encode_cursor(EnginePosition(moment, str(engine_id)))
    decoded = decode_cursor(cursor)
    assert decoded == EnginePosition(moment.astimezone(UTC), str(engine_id))
    assert decoded.created_at.utcoffset() == timedelta(0)
    assert re.fullmatch(CURSOR_PATTERN, cursor)


def test_a_cursor_made_from_a_local_time_carries_it_in_utc() -> None:
    local = datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    decoded = decode_cursor(encode_cursor(EnginePosition(local, ENGINE)))
    assert decoded.created_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert decoded.created_at.utcoffset() == timedelta(0)


BAD_CURSORS = [
    pytest.param("", id="empty"),
    pytest.param("not base64!", id="not-base64"),
    pytest.param(b64(b"\xff\xfe|\xfd"), id="not-utf8"),
    pytest.param(b64(f"2025-03-01T12:00:00+00:00{ENGINE}".encode()), id="no-separator"),
    pytest.param(b64(f"2025-03-01T12:00:00+00:00|{ENGINE}|x".encode()), id="three-parts"),
    pytest.param(b64(f"yesterday|{ENGINE}".encode()), id="not-a-time"),
    pytest.param(b64(f"2025-03-01T12:00:00|{ENGINE}".encode()), id="time-without-zone"),
    pytest.param(b64(b"2025-03-01T12:00:00+00:00|not-a-uuid"), id="not-a-uuid"),
    pytest.param(CURSOR + "A" * (MAX_CURSOR_LENGTH + 1 - len(CURSOR)), id="too-long"),
    pytest.param("1." + "g" * 32, id="not-hex"),
    pytest.param("250000000000000000." + "a" * 32, id="beyond-the-documented-range"),
    pytest.param(CURSOR.upper(), id="upper-case-hex"),
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_anything_but_a_cursor_made_here_is_refused(cursor: str) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        decode_cursor(cursor)


def test_a_query_without_parameters_asks_for_the_first_page_of_every_engine() -> None:
    assert parse_engines_query(query()) == EnginesQuery(None, DEFAULT_LIMIT, 0, None)
    assert DEFAULT_LIMIT == 100


GOOD_QUERIES = [
    ((("status", "running"),), EnginesQuery(status="running")),
    ((("status", "destroying"), ("limit", "5")), EnginesQuery(status="destroying", limit=5)),
    ((("limit", "1"),), EnginesQuery(limit=1)),
    ((("limit", "1000"),), EnginesQuery(limit=1000)),
    ((("limit", "0010"),), EnginesQuery(limit=10)),
    ((("offset", "0"),), EnginesQuery(offset=0)),
    ((("offset", str(MAX_OFFSET)),), EnginesQuery(offset=MAX_OFFSET)),
    ((("after", CURSOR), ("limit", "20")), EnginesQuery(limit=20, after=POSITION)),
]


@pytest.mark.parametrize(("pairs", "expected"), GOOD_QUERIES)
def test_a_valid_query_is_read_into_its_filter_and_page(
    pairs: tuple[tuple[str, str], ...], expected: EnginesQuery
) -> None:
    assert parse_engines_query(query(*pairs)) == expected


LIMIT = "Query parameter 'limit' must be an integer from 1 to 1000."
OFFSET = f"Query parameter 'offset' must be an integer from 0 to {MAX_OFFSET}."
AFTER = "Query parameter 'after' must be a cursor from a Link: rel=\"next\" header."
UNKNOWN = "Unknown query parameter; known: status, limit, offset, after."
BAD_QUERIES = [
    ((("status", "hibernating"),), f"Query parameter 'status' must be one of {STATES}."),
    ((("status", "Running"),), f"Query parameter 'status' must be one of {STATES}."),
    ((("status", ""),), f"Query parameter 'status' must be one of {STATES}."),
    ((("status", "running"), ("status", "failed")), "Query parameter 'status' must be given once."),
    ((("limit", "0"),), LIMIT),
    ((("limit", "1001"),), LIMIT),
    ((("limit", "-1"),), LIMIT),
    ((("limit", "+5"),), LIMIT),
    ((("limit", " 5"),), LIMIT),
    ((("limit", "1e3"),), LIMIT),
    ((("limit", "ten"),), LIMIT),
    ((("limit", ""),), LIMIT),
    ((("limit", "\N{ARABIC-INDIC DIGIT FIVE}"),), LIMIT),
    ((("limit", "00000000001"),), LIMIT),
    ((("limit", "5"), ("limit", "6")), "Query parameter 'limit' must be given once."),
    ((("offset", str(MAX_OFFSET + 1)),), OFFSET),
    ((("offset", "-1"),), OFFSET),
    ((("after", "garbage"),), AFTER),
    ((("after", CURSOR), ("after", CURSOR)), "Query parameter 'after' must be given once."),
    (
        (("after", CURSOR), ("offset", "10")),
        "Query parameter 'after' must be used without 'offset'.",
    ),
    ((("status", "zombie"), ("limit", "0")), f"Query parameter 'status' must be one of {STATES}."),
    ((("limit", "0"), ("offset", "-1")), LIMIT),
    ((("stauts", "failed"),), UNKNOWN),
    ((("status", "failed"), ("pk-sept-pasted-key", "")), UNKNOWN),
]


@pytest.mark.parametrize(("pairs", "message"), BAD_QUERIES)
def test_a_bad_query_is_refused_naming_the_first_bad_parameter_and_what_it_must_be(
    pairs: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(ApiError) as raised:
        parse_engines_query(query(*pairs))
    assert (raised.value.status, raised.value.code) == (400, "INVALID_PARAMETER")
    assert raised.value.message == message


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_bad_cursor_in_after_is_refused_as_a_parameter_error(cursor: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_engines_query(query(("after", cursor)))
    assert raised.value.message == AFTER


def test_the_next_page_keeps_the_filter_and_limit_and_starts_after_the_last_engine() -> None:
    current = EnginesQuery(status="failed", limit=50, offset=0)
    following = current.next_page(POSITION)
    assert following == {"status": "failed", "limit": "50", "after": CURSOR}
    assert list(following) == ["status", "limit", "after"]
    assert parse_engines_query(query(*following.items())) == EnginesQuery(
        status="failed", limit=50, after=POSITION
    )


def test_the_next_page_of_an_unfiltered_listing_has_no_status() -> None:
    assert EnginesQuery(limit=7, offset=70).next_page(POSITION) == {"limit": "7", "after": CURSOR}
