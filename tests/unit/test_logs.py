"""Logging: every record is one line, as key=value text or as JSON, for events and plain logs."""

import io
import json
import logging
import re
import time
from calendar import timegm
from collections.abc import Callable, Iterator

import pytest

from exporter.config import LogSettings
from exporter.logs import LOGGER_NAMES, configure_logging, log_event

refresher = logging.getLogger("exporter.refresher")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Configuring logging changes process-wide loggers; put them back after each test."""
    loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def _lines(log_format: str, emit: Callable[[], None], level: str = "debug") -> list[str]:
    stream = io.StringIO()
    configure_logging(LogSettings(level=level, format=log_format), stream)
    emit()
    return stream.getvalue().splitlines()


def _raise_and_log(logger: logging.Logger) -> None:
    try:
        raise RuntimeError("pool exhausted\nsecond line")
    except RuntimeError as error:
        log_event(logger, logging.ERROR, "refresh_failed", stage="query", exc_info=error)


TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_text_line_has_time_level_logger_event_and_fields() -> None:
    [line] = _lines(
        "text",
        lambda: log_event(refresher, logging.INFO, "refresh_ok", duration_s=0.123, products=3),
    )

    assert re.fullmatch(
        rf"{TIMESTAMP} info exporter\.refresher refresh_ok duration_s=0\.123 products=3", line
    )


def test_timestamp_is_current_utc_time() -> None:
    before = time.time()
    [line] = _lines("json", lambda: log_event(refresher, logging.INFO, "refresh_ok"))
    ts = json.loads(line)["ts"]

    logged = timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float(ts[19:-1])
    assert before - 1 <= logged <= time.time() + 1


def test_json_line_parses_with_typed_fields() -> None:
    [line] = _lines(
        "json",
        lambda: log_event(
            refresher, logging.WARNING, "refresh_ok", duration_s=0.123, products=3, full=True
        ),
    )

    record = json.loads(line)
    assert re.fullmatch(TIMESTAMP, record.pop("ts"))
    assert record == {
        "level": "warning",
        "logger": "exporter.refresher",
        "event": "refresh_ok",
        "duration_s": 0.123,
        "products": 3,
        "full": True,
    }


AWKWARD = 'said "no" = fine\nnext line\r\tand \u2028 after a line separator'


def test_text_quotes_values_with_spaces_quotes_and_newlines_so_the_line_stays_whole() -> None:
    [line] = _lines(
        "text",
        lambda: log_event(refresher, logging.INFO, "refresh_failed", error=AWKWARD, empty=""),
    )

    fields = line.split(" refresh_failed ", 1)[1]
    assert fields.startswith('error="said \\"no\\" = fine\\nnext line\\r\\tand ')
    assert fields.endswith(' empty=""')
    assert json.loads(fields.removeprefix("error=").removesuffix(' empty=""')) == AWKWARD


def test_text_leaves_simple_values_bare_and_spells_null_and_booleans_like_json() -> None:
    [line] = _lines(
        "text",
        lambda: log_event(refresher, logging.INFO, "x", path="/status", rows=None, full=False),
    )

    assert line.endswith(" x path=/status rows=null full=false")


def test_json_keeps_awkward_values_intact() -> None:
    [line] = _lines("json", lambda: log_event(refresher, logging.INFO, "x", error=AWKWARD))

    assert json.loads(line)["error"] == AWKWARD


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_exception_is_folded_into_the_same_line(log_format: str) -> None:
    [line] = _lines(log_format, lambda: _raise_and_log(refresher))

    if log_format == "json":
        exc = json.loads(line)["exc"]
        assert exc.startswith("Traceback (most recent call last):\n")
        assert exc.endswith("RuntimeError: pool exhausted\nsecond line")
    else:
        assert ' stage=query exc="Traceback (most recent call last):\\n' in line
        assert line.endswith('RuntimeError: pool exhausted\\nsecond line"')


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_plain_library_messages_are_one_line_with_the_message_as_event(log_format: str) -> None:
    message = 'Error handling request\n"GET /status"'

    def emit() -> None:
        server = logging.getLogger("aiohttp.server")
        try:
            raise ValueError("boom")
        except ValueError:
            server.exception(message)

    [line] = _lines(log_format, emit)

    if log_format == "json":
        record = json.loads(line)
        assert (record["logger"], record["event"]) == ("aiohttp.server", message)
        assert record["exc"].endswith("ValueError: boom")
    else:
        assert ' error aiohttp.server "Error handling request\\n\\"GET /status\\"" exc=' in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_log_records_are_formatted(log_format: str) -> None:
    access = logging.getLogger("aiohttp.access")

    [line] = _lines(log_format, lambda: access.info('%s "%s" %s', "127.0.0.1", "GET /", 200))

    assert "aiohttp.access" in line
    assert '127.0.0.1 \\"GET /\\" 200' in line


def test_a_field_named_like_a_standard_key_does_not_replace_it() -> None:
    [line] = _lines("json", lambda: log_event(refresher, logging.INFO, "x", ts="then", exc="e"))

    record = json.loads(line)
    assert record["ts"] != "then"
    assert (record["_ts"], record["_exc"]) == ("then", "e")


def test_records_below_the_configured_level_are_dropped() -> None:
    def emit() -> None:
        log_event(refresher, logging.INFO, "refresh_ok")
        log_event(refresher, logging.WARNING, "refresh_slow")

    [line] = _lines("text", emit, level="warning")

    assert " warning exporter.refresher refresh_slow" in line


def test_configuring_twice_replaces_the_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogSettings(), first)
    handler_counts = [len(logging.getLogger(name).handlers) for name in LOGGER_NAMES]
    configure_logging(LogSettings(format="json"), second)

    log_event(refresher, logging.INFO, "refresh_ok")

    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1
    assert [len(logging.getLogger(name).handlers) for name in LOGGER_NAMES] == handler_counts


def test_without_a_stream_lines_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings())

    log_event(refresher, logging.INFO, "refresh_ok", products=2)

    assert capsys.readouterr().err.endswith(" info exporter.refresher refresh_ok products=2\n")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_redaction_masks_known_secrets_and_credential_shapes(log_format: str) -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format=log_format), stream, secrets=["sekrit-token-xyz"])
    log_event(
        refresher,
        logging.INFO,
        "leaky",
        token="sekrit-token-xyz",
        key="pk-sept-acme-0123456789",
        header="X-Platform-Key: anything-at-all",
        auth="Authorization: Bearer abc.def",
        basic="basic dXNlcjpwYXNz",
        dsn="postgresql://u:hunter2@db/x",
        keyword="host=db password=hunter2",
    )
    line = stream.getvalue()
    for secret in ("sekrit-token-xyz", "0123456789", "anything-at-all", "abc.def"):
        assert secret not in line
    assert "dXNlcjpwYXNz" not in line
    assert "hunter2" not in line
    assert line.count("***") == 7
