"""Service configuration: the typed settings, and loading them from YAML plus environment.

Every key is declared once, on its dataclass field, with its default and the check that
validates it; the loader walks those declarations, so there is no per-key parsing code. A bad
configuration fails at start with one line naming the dotted key, and the database password
never appears in an error or a repr.
"""

import math
import os
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from psycopg2 import ProgrammingError
from psycopg2.extensions import parse_dsn

from exporter.routes import ROUTE_PATHS

DSN_ENV = "FLEET_EXPORTER_DSN"
CHECKPOINT_ENV = "FLEET_EXPORTER_CHECKPOINT_PATH"

#: Paths served by the JSON API and the probes; the scrape endpoint must not shadow them.
RESERVED_PATHS = frozenset(ROUTE_PATHS.values())


class ConfigError(ValueError):
    """An unusable configuration; the message is one line that names the offending key."""


class _Rejected(Exception):
    """Raised by a check with what it expected; the loader adds the key and the value."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


Check = Callable[[object], object]


@dataclass(frozen=True, slots=True)
class _Key:
    check: Check
    env: str | None = None
    secret: bool = False


_KEY = "exporter.config"


def _rule(check: Check, *, env: str | None = None, secret: bool = False) -> dict[str, _Key]:
    """Field metadata declaring a configuration key and the check its value must pass."""
    return {_KEY: _Key(check, env, secret)}


def _integer(low: int, high: int) -> Check:
    expected = f"expected an integer from {low} to {high}"

    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Rejected(expected)
        return value

    return check


def _as_number(value: object) -> float | None:
    """The value as a finite float, or None: bools and strings are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _number(
    *, above: float | None = None, at_least: float | None = None, at_most: float | None = None
) -> Check:
    bounds = [f"> {above:g}"] if above is not None else []
    bounds += [f">= {at_least:g}"] if at_least is not None else []
    bounds += [f"<= {at_most:g}"] if at_most is not None else []
    expected = "expected a number " + " and ".join(bounds)

    def check(value: object) -> object:
        number = _as_number(value)
        if (
            number is None
            or (above is not None and number <= above)
            or (at_least is not None and number < at_least)
            or (at_most is not None and number > at_most)
        ):
            raise _Rejected(expected)
        return number

    return check


def _text(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise _Rejected("expected a non-empty string")
    return value


def _one_of(*choices: str) -> Check:
    expected = "expected one of " + ", ".join(choices)

    def check(value: object) -> object:
        if value not in choices:
            raise _Rejected(expected)
        return value

    return check


def _names(value: object) -> object:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item.strip() for item in value)
    ):
        raise _Rejected("expected a non-empty list of non-empty strings")
    return tuple(value)


def _buckets(value: object) -> object:
    expected = "expected a non-empty list of numbers > 0 in strictly increasing order"
    if not isinstance(value, list) or not value:
        raise _Rejected(expected)
    bounds = [_as_number(item) for item in value]
    numbers = [bound for bound in bounds if bound is not None and bound > 0]
    if len(numbers) != len(value) or any(b <= a for a, b in pairwise(numbers)):
        raise _Rejected(expected)
    return tuple(numbers)


def _scrape_path(value: object) -> object:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise _Rejected("expected a URL path starting with '/'")
    if value in RESERVED_PATHS:
        raise _Rejected("expected a path not already served by the JSON API or the probes")
    return value


def _optional_file(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Rejected("expected a file path or null")
    return Path(value)


def _dsn(value: object) -> object:
    expected = "expected a PostgreSQL connection string (postgresql://... URL or key=value pairs)"
    if not isinstance(value, str) or not value.strip():
        raise _Rejected(expected)
    try:
        parse_dsn(value)
    except ProgrammingError:
        raise _Rejected(expected) from None
    return value


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:)[^/?#]*@")
_URL_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S*)")


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, in URL or libpq keyword form."""
    if "://" in dsn:
        redacted = _URL_PASSWORD.sub(r"\1***@", dsn)
        return _URL_QUERY_PASSWORD.sub(r"\1***", redacted)
    return _KEYWORD_PASSWORD.sub(r"\1***", dsn)


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    dsn: str = field(repr=False, metadata=_rule(_dsn, env=DSN_ENV, secret=True))
    pool_max: int = field(default=4, metadata=_rule(_integer(1, 64)))
    statement_timeout_s: float = field(default=5.0, metadata=_rule(_number(above=0, at_most=600)))
    connect_timeout_s: float = field(default=5.0, metadata=_rule(_number(above=0, at_most=600)))

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    @property
    def password(self) -> str | None:
        password = parse_dsn(self.dsn).get("password")
        return password if isinstance(password, str) and password else None


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = field(default="0.0.0.0", metadata=_rule(_text))
    port: int = field(default=9480, metadata=_rule(_integer(0, 65535)))
    header_timeout_s: float = field(default=10.0, metadata=_rule(_number(above=0, at_most=600)))
    keepalive_timeout_s: float = field(default=75.0, metadata=_rule(_number(above=0, at_most=3600)))
    max_connections: int = field(default=1024, metadata=_rule(_integer(1, 1_000_000)))


@dataclass(frozen=True, slots=True)
class RefreshSettings:
    interval_s: float = field(default=15.0, metadata=_rule(_number(above=0, at_most=86400)))
    max_staleness_s: float = field(
        default=120.0, metadata=_rule(_number(above=0, at_most=7 * 86400))
    )
    engine_census_interval_s: float = field(
        default=60.0, metadata=_rule(_number(at_least=0, at_most=3600))
    )
    backfill_statement_s: float = field(
        default=2.0, metadata=_rule(_number(at_least=0.1, at_most=60))
    )

    def __post_init__(self) -> None:
        if self.max_staleness_s < self.interval_s:
            raise ConfigError(
                f"refresh.max_staleness_s: must be >= refresh.interval_s "
                f"({self.interval_s:g}), got {self.max_staleness_s:g}"
            )


@dataclass(frozen=True, slots=True)
class HealthSettings:
    critical_failed_ratio: float = field(default=0.10, metadata=_rule(_number(above=0, at_most=1)))
    probe_overdue_s: float = field(default=90.0, metadata=_rule(_number(at_least=1, at_most=86400)))


@dataclass(frozen=True, slots=True)
class ActionSettings:
    provision: tuple[str, ...] = field(default=("provision",), metadata=_rule(_names))
    destroy: tuple[str, ...] = field(default=("destroy",), metadata=_rule(_names))
    crash: tuple[str, ...] = field(default=("health_failed",), metadata=_rule(_names))
    restart: tuple[str, ...] = field(default=("auto_restart_start",), metadata=_rule(_names))


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    boot_sample_size: int = field(default=100, metadata=_rule(_integer(1, 100_000)))
    boot_buckets_s: tuple[float, ...] = field(
        default=(1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0, 120.0), metadata=_rule(_buckets)
    )
    max_versions: int = field(default=10, metadata=_rule(_integer(1, 1000)))


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    path: str = field(default="/prometheus", metadata=_rule(_scrape_path))
    bearer_token_file: Path | None = field(default=None, metadata=_rule(_optional_file))
    # Not a key of its own: read from bearer_token_file when the settings are loaded.
    bearer_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StateSettings:
    checkpoint_path: Path | None = field(
        default=None, metadata=_rule(_optional_file, env=CHECKPOINT_ENV)
    )
    checkpoint_interval_s: float = field(
        default=60.0, metadata=_rule(_number(at_least=1, at_most=3600))
    )


@dataclass(frozen=True, slots=True)
class WebSettings:
    #: The Prometheus web configuration file (TLS, headers, basic auth); see webconfig.py.
    config_file: Path | None = field(default=None, metadata=_rule(_optional_file))


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = field(default="info", metadata=_rule(_one_of("debug", "info", "warning", "error")))
    format: str = field(default="text", metadata=_rule(_one_of("text", "json")))


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings
    listen: ListenSettings = field(default_factory=ListenSettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    actions: ActionSettings = field(default_factory=ActionSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    state: StateSettings = field(default_factory=StateSettings)
    web: WebSettings = field(default_factory=WebSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What the log must never show: the DSN password and the scrape bearer token."""
        known = (self.database.password, self.prometheus.bearer_token)
        return tuple(secret for secret in known if secret)


_SECTIONS: dict[str, type[Any]] = get_type_hints(Settings)

_REMOVED_KEYS = {
    "refresh.startup_timeout_s": "removed: the audit log is counted in chunks, each"
    " statement bounded by refresh.backfill_statement_s",
}
"""Keys of earlier versions, rejected with what replaced them rather than as unknown."""


def _describe(value: object) -> str:
    """A short one-line rendering of a rejected value, as the YAML author wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(redact_dsn(value)) if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys(section: type[Any]) -> dict[str, tuple[Field[Any], _Key]]:
    return {f.name: (f, f.metadata[_KEY]) for f in fields(section) if _KEY in f.metadata}


def _section_values(
    section: type[Any], raw: object, name: str, environ: Mapping[str, str]
) -> dict[str, object]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {_describe(raw)}")
    keys = _keys(section)
    for key in raw:
        if f"{name}.{key}" in _REMOVED_KEYS:
            raise ConfigError(f"{name}.{key}: {_REMOVED_KEYS[f'{name}.{key}']}")
        if key not in keys:
            raise ConfigError(f"{name}.{key}: unknown key")
    values: dict[str, object] = {}
    for key, (declared, spec) in keys.items():
        label = f"{name}.{key}"
        if spec.env and environ.get(spec.env):
            value: object = environ[spec.env]
            label += f" (from {spec.env})"
        elif key in raw:
            value = raw[key]
        elif declared.default is MISSING and declared.default_factory is MISSING:
            hint = f" (or set {spec.env})" if spec.env else ""
            raise ConfigError(f"{label}: required{hint}")
        else:
            continue
        try:
            values[key] = spec.check(value)
        except _Rejected as rejected:
            shown = "" if spec.secret else f", got {_describe(value)}"
            raise ConfigError(f"{label}: {rejected.expected}{shown}") from None
    return values


def _read_bearer_token(path: Path) -> str:
    key = "prometheus.bearer_token_file"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {reason}") from None
    if not token:
        raise ConfigError(f"{key}: {str(path)!r} is empty")
    if any(c.isspace() for c in token):
        raise ConfigError(f"{key}: {str(path)!r} must hold a single token without whitespace")
    return token


def settings_from_mapping(
    raw: object, environ: Mapping[str, str] | None = None, *, base_dir: Path | None = None
) -> Settings:
    """Validate an already-parsed configuration document into Settings.

    A non-empty ``FLEET_EXPORTER_DSN`` in ``environ`` (default ``os.environ``) overrides
    ``database.dsn``. A relative file path (``prometheus.bearer_token_file``,
    ``state.checkpoint_path``, ``web.config_file``: every key checked by ``_optional_file``) is
    resolved against ``base_dir`` (the config file's directory), like Prometheus does with its
    own files.
    """
    environ = os.environ if environ is None else environ
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"configuration: expected a mapping of sections ({', '.join(_SECTIONS)}), "
            f"got {_describe(raw)}"
        )
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(f"{key}: unknown key")
    values = {
        name: _section_values(section, raw.get(name, {}), name, environ)
        for name, section in _SECTIONS.items()
    }
    if base_dir is not None:
        for given in values.values():
            for key, value in given.items():
                if isinstance(value, Path):
                    given[key] = base_dir / value
    token_file = values["prometheus"].get("bearer_token_file")
    if isinstance(token_file, Path):
        values["prometheus"]["bearer_token"] = _read_bearer_token(token_file)
    return Settings(**{name: _SECTIONS[name](**given) for name, given in values.items()})


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that rejects duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_error(path: Path, err: yaml.YAMLError) -> ConfigError:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        problem = err.problem or "syntax error"
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return ConfigError(f"{path}: invalid YAML at {where}: {' '.join(problem.split())}")
    return ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}")


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the YAML file at ``path`` (None: environment and defaults only)."""
    if path is None:
        return settings_from_mapping({}, environ)
    try:
        document = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from None
    try:
        raw = yaml.load(document, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    return settings_from_mapping(raw, environ, base_dir=path.parent)
