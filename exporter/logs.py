"""Structured logging: every record is exactly one line, as ``key=value`` text or as JSON.

The service logs through ``log_event(logger, level, "refresh_ok", duration_s=0.1)``; plain
``logger.info("...")`` records from libraries (aiohttp) come out in the same shape with the
message as the event. Newlines in values and tracebacks are escaped, so a line-oriented log
collector never splits one event into several.

Secrets are kept out of the log by not logging them; as a second line of defence every line
passes a ``Redactor`` that masks the secrets the service knows (the bearer token, the DSN
password) and anything shaped like a credential (platform keys, ``Authorization`` values,
passwords in connection strings).
"""

import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from exporter.config import LogSettings

#: The namespaces configured: the service's own loggers and aiohttp's (access, server, web).
LOGGER_NAMES = ("exporter", "aiohttp")

_FIELDS = "exporter_fields"
# Keys every line may carry; a field of the same name is logged with a leading underscore.
_RESERVED = frozenset({"ts", "level", "logger", "event", "exc", "stack"})
# Characters str.splitlines() breaks on that json.dumps(ensure_ascii=False) leaves as they are.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    *,
    exc_info: BaseException | bool | None = None,
    **fields: object,
) -> None:
    """Log ``event`` with ``fields`` as one line; ``exc_info`` folds a traceback into it."""
    logger.log(level, event, exc_info=exc_info, extra={_FIELDS: fields}, stacklevel=2)


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _one_line_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str).translate(_LINE_BREAKS)


def _plain(value: object) -> object:
    """The value as JSON can carry it: NaN and infinities are not JSON numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _text_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return _one_line_json(text)


MASK = "***"
_CREDENTIAL_SHAPES = (
    re.compile(r"(pk-sept-)[^\s\"'\\,;]+"),
    re.compile(r"(?i)(x-platform-key\s*[:=]\s*)[^\s\"'\\,;]+"),
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)[^\s\"'\\,;]+"),
    re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s\"']*:)[^@/\s\"']*(?=@)"),
    re.compile(r"(?i)(\bpassword\s*[=:]\s*)(?:'[^']*'?|[^\s\"'\\,;&]+)"),
)


class Redactor:
    """Masks known secrets, and text shaped like a credential, in a rendered line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self._secrets:
            line = line.replace(secret, MASK)
        for shape in _CREDENTIAL_SHAPES:
            line = shape.sub(rf"\g<1>{MASK}", line)
        return line


class OneLineFormatter(logging.Formatter):
    """Renders a record as one ``text`` or ``json`` line; see the module docstring."""

    def __init__(self, log_format: str, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._json = log_format == "json"
        self._redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, _FIELDS, {})
        for key, value in fields.items() if isinstance(fields, dict) else ():
            line[f"_{key}" if key in _RESERVED else key] = _plain(value)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        if self._json:
            return self._redact(_one_line_json(line))
        head = " ".join(_text_value(line.pop(key)) for key in ("ts", "level", "logger", "event"))
        rest = (f" {key}={_text_value(value)}" for key, value in line.items())
        return self._redact("".join([head, *rest]))


class _LineHandler(logging.Handler):
    """Writes one formatted line per record to a stream; without one, to the current stderr.

    Looking stderr up at each record (as logging's last-resort handler does) keeps working
    when it is replaced after configuration, e.g. by a test runner capturing output.
    """

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self._stream or sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(
    settings: LogSettings, stream: TextIO | None = None, *, secrets: Iterable[str] = ()
) -> None:
    """Route the service's and aiohttp's records to ``stream`` (default stderr), one line each,
    with ``secrets`` masked wherever they would appear.

    Calling it again replaces the handler it installed earlier instead of adding another.
    """
    handler = _LineHandler(stream)
    handler.setFormatter(OneLineFormatter(settings.format, Redactor(secrets)))
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        for previous in [h for h in logger.handlers if isinstance(h, _LineHandler)]:
            logger.removeHandler(previous)
        logger.addHandler(handler)
        logger.setLevel(level)
