"""Configuration: defaults, environment override, and one clear line for every bad input."""

import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from exporter.config import (
    DSN_ENV,
    ConfigError,
    DatabaseSettings,
    RefreshSettings,
    Settings,
    load_settings,
    redact_dsn,
    settings_from_mapping,
)

PASSWORD = "hunter2-secret"
DSN = f"postgresql://exporter:{PASSWORD}@127.0.0.1:5432/orchestrator"
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "exporter.yaml"
EXAMPLE_DSN = "postgresql://exporter@127.0.0.1:5432/orchestrator"


def _with_dsn(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"database": {"dsn": DSN}}
    for name, values in sections.items():
        raw[name] = {**raw[name], **values} if isinstance(values, dict) and name in raw else values
    return raw


def _error(raw: object, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(raw, environ={} if environ is None else environ)
    return _checked_message(caught.value)


def _checked_message(error: ConfigError) -> str:
    message = str(error)
    assert message.splitlines() == [message], "an error must be exactly one line"
    assert PASSWORD not in message
    return message


def _declared_keys() -> Iterator[str]:
    sections = get_type_hints(Settings)
    for section in fields(Settings):
        for key in fields(sections[section.name]):
            if key.name != "bearer_token":  # read from bearer_token_file, not a key itself
                yield f"{section.name}.{key.name}"


def test_only_the_dsn_is_needed_and_everything_else_has_its_documented_default() -> None:
    settings = settings_from_mapping({"database": {"dsn": DSN}}, environ={})

    assert settings == Settings(database=DatabaseSettings(dsn=DSN))
    assert settings.database.pool_max == 4
    assert settings.database.statement_timeout_s == 5.0
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 9480)
    assert (settings.refresh.interval_s, settings.refresh.max_staleness_s) == (15.0, 120.0)
    assert settings.health.critical_failed_ratio == 0.10
    assert settings.actions.provision == ("provision",)
    assert settings.actions.crash == ("health_failed",)
    assert settings.actions.restart == ("auto_restart_start",)
    assert settings.actions.destroy == ("destroy",)
    assert settings.metrics.boot_sample_size == 100
    assert settings.metrics.boot_buckets_s == (1, 2, 3, 5, 8, 13, 21, 34, 60, 120)
    assert settings.health.probe_overdue_s == 90.0
    assert settings.metrics.max_versions == 10
    assert settings.refresh.engine_census_interval_s == 60.0
    assert settings.prometheus.path == "/prometheus"
    assert settings.prometheus.bearer_token_file is None
    assert settings.prometheus.bearer_token is None
    assert (settings.log.level, settings.log.format) == ("info", "text")


def test_environment_dsn_overrides_the_file() -> None:
    other = "postgresql://reader@db.internal/orchestrator"

    settings = settings_from_mapping({"database": {"dsn": DSN}}, environ={DSN_ENV: other})

    assert settings.database.dsn == other


def test_environment_dsn_alone_is_enough_without_a_file() -> None:
    assert load_settings(None, environ={DSN_ENV: DSN}).database.dsn == DSN


def test_an_empty_environment_dsn_counts_as_unset() -> None:
    settings = settings_from_mapping({"database": {"dsn": DSN}}, environ={DSN_ENV: ""})

    assert settings.database.dsn == DSN


def test_process_environment_is_used_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DSN_ENV, DSN)

    assert load_settings(None).database.dsn == DSN


def test_missing_dsn_says_how_to_provide_it() -> None:
    assert _error({}) == "database.dsn: required (or set FLEET_EXPORTER_DSN)"


def test_integers_are_accepted_where_seconds_are_wanted_and_fractions_too() -> None:
    settings = settings_from_mapping(
        _with_dsn(refresh={"interval_s": 0.2, "max_staleness_s": 2}, database={"pool_max": 64}),
        environ={},
    )

    assert settings.refresh.interval_s == 0.2
    assert settings.refresh.max_staleness_s == 2.0
    assert isinstance(settings.refresh.max_staleness_s, float)
    assert settings.database.pool_max == 64


def test_the_edges_of_the_fleet_insight_ranges_are_accepted() -> None:
    low = settings_from_mapping(
        _with_dsn(
            health={"probe_overdue_s": 1},
            metrics={"max_versions": 1},
            refresh={"engine_census_interval_s": 0},
        ),
        environ={},
    )
    high = settings_from_mapping(
        _with_dsn(
            health={"probe_overdue_s": 86400},
            metrics={"max_versions": 1000},
            refresh={"engine_census_interval_s": 3600},
        ),
        environ={},
    )

    assert (low.health.probe_overdue_s, high.health.probe_overdue_s) == (1.0, 86400.0)
    assert (low.metrics.max_versions, high.metrics.max_versions) == (1, 1000)
    assert low.refresh.engine_census_interval_s == 0.0
    assert high.refresh.engine_census_interval_s == 3600.0


def test_a_rejected_lower_bound_is_named_inclusive() -> None:
    message = _error(_with_dsn(health={"probe_overdue_s": 0}))

    assert message == "health.probe_overdue_s: expected a number >= 1 and <= 86400, got 0"


def test_port_zero_means_any_free_port_and_is_accepted() -> None:
    assert settings_from_mapping(_with_dsn(listen={"port": 0}), environ={}).listen.port == 0


BAD_INPUTS = [
    pytest.param({"databse": {}}, "databse", id="unknown-top-level-key"),
    pytest.param({"database": {"poolmax": 4}}, "database.poolmax", id="unknown-nested-key"),
    pytest.param({"refresh": {"interval_s": "abc"}}, "refresh.interval_s", id="string-for-number"),
    pytest.param({"listen": {"port": "9480"}}, "listen.port", id="string-for-integer"),
    pytest.param({"database": {"pool_max": True}}, "database.pool_max", id="bool-for-integer"),
    pytest.param({"refresh": {"interval_s": True}}, "refresh.interval_s", id="bool-for-number"),
    pytest.param({"database": {"pool_max": 4.5}}, "database.pool_max", id="fraction-for-integer"),
    pytest.param({"database": {"pool_max": None}}, "database.pool_max", id="null-integer"),
    pytest.param({"listen": {"host": None}}, "listen.host", id="null-string"),
    pytest.param({"listen": {"host": ""}}, "listen.host", id="empty-host"),
    pytest.param({"database": {"pool_max": 0}}, "database.pool_max", id="pool-too-small"),
    pytest.param({"database": {"pool_max": 65}}, "database.pool_max", id="pool-too-large"),
    pytest.param({"listen": {"port": 65536}}, "listen.port", id="port-too-large"),
    pytest.param({"listen": {"port": -1}}, "listen.port", id="negative-port"),
    pytest.param(
        {"database": {"statement_timeout_s": 0}}, "database.statement_timeout_s", id="zero-timeout"
    ),
    pytest.param(
        {"database": {"connect_timeout_s": 601}}, "database.connect_timeout_s", id="long-timeout"
    ),
    pytest.param({"refresh": {"interval_s": 0}}, "refresh.interval_s", id="zero-interval"),
    pytest.param(
        {"refresh": {"interval_s": float("nan")}}, "refresh.interval_s", id="nan-interval"
    ),
    pytest.param(
        {"refresh": {"interval_s": 30, "max_staleness_s": 20}},
        "refresh.max_staleness_s",
        id="staleness-below-interval",
    ),
    pytest.param(
        {"health": {"critical_failed_ratio": 0}}, "health.critical_failed_ratio", id="zero-ratio"
    ),
    pytest.param(
        {"health": {"critical_failed_ratio": 1.5}}, "health.critical_failed_ratio", id="ratio-gt-1"
    ),
    pytest.param({"actions": {"crash": []}}, "actions.crash", id="empty-action-list"),
    pytest.param({"actions": {"restart": [""]}}, "actions.restart", id="empty-action-name"),
    pytest.param({"actions": {"provision": "provision"}}, "actions.provision", id="action-str"),
    pytest.param({"actions": {"destroy": [1]}}, "actions.destroy", id="non-string-action"),
    pytest.param(
        {"metrics": {"boot_buckets_s": [1, 2, 2]}}, "metrics.boot_buckets_s", id="repeated-bucket"
    ),
    pytest.param(
        {"metrics": {"boot_buckets_s": [5, 1]}}, "metrics.boot_buckets_s", id="decreasing-buckets"
    ),
    pytest.param({"metrics": {"boot_buckets_s": []}}, "metrics.boot_buckets_s", id="no-buckets"),
    pytest.param({"metrics": {"boot_buckets_s": [0, 1]}}, "metrics.boot_buckets_s", id="zero-le"),
    pytest.param(
        {"metrics": {"boot_buckets_s": ["1", "2"]}}, "metrics.boot_buckets_s", id="string-le"
    ),
    pytest.param(
        {"metrics": {"boot_sample_size": 0}}, "metrics.boot_sample_size", id="empty-sample"
    ),
    pytest.param(
        {"health": {"probe_overdue_s": 0.5}}, "health.probe_overdue_s", id="probe-overdue-below-1"
    ),
    pytest.param(
        {"health": {"probe_overdue_s": 86401}}, "health.probe_overdue_s", id="probe-overdue-long"
    ),
    pytest.param(
        {"health": {"probe_overdue_s": "90s"}}, "health.probe_overdue_s", id="probe-overdue-str"
    ),
    pytest.param({"metrics": {"max_versions": 0}}, "metrics.max_versions", id="no-versions"),
    pytest.param({"metrics": {"max_versions": 1001}}, "metrics.max_versions", id="many-versions"),
    pytest.param({"metrics": {"max_versions": 2.5}}, "metrics.max_versions", id="half-version"),
    pytest.param(
        {"refresh": {"engine_census_interval_s": -1}},
        "refresh.engine_census_interval_s",
        id="negative-census-interval",
    ),
    pytest.param(
        {"refresh": {"engine_census_interval_s": 3601}},
        "refresh.engine_census_interval_s",
        id="long-census-interval",
    ),
    pytest.param({"log": {"format": "xml"}}, "log.format", id="bad-log-format"),
    pytest.param({"log": {"level": "verbose"}}, "log.level", id="bad-log-level"),
    pytest.param({"prometheus": {"path": "/metrics"}}, "prometheus.path", id="path-is-json-api"),
    pytest.param({"prometheus": {"path": "/healthz"}}, "prometheus.path", id="path-is-probe"),
    pytest.param({"prometheus": {"path": "/"}}, "prometheus.path", id="path-is-landing-page"),
    pytest.param({"prometheus": {"path": "prometheus"}}, "prometheus.path", id="relative-path"),
    pytest.param(
        {"prometheus": {"bearer_token_file": 7}}, "prometheus.bearer_token_file", id="token-int"
    ),
    pytest.param(
        {"refresh": {"backfill_statement_s": 0.05}},
        "refresh.backfill_statement_s",
        id="backfill-statement-too-short",
    ),
    pytest.param(
        {"refresh": {"backfill_statement_s": 61}},
        "refresh.backfill_statement_s",
        id="backfill-statement-too-long",
    ),
    pytest.param(
        {"state": {"checkpoint_interval_s": 0.5}},
        "state.checkpoint_interval_s",
        id="checkpoint-interval-too-short",
    ),
    pytest.param(
        {"state": {"checkpoint_interval_s": 3601}},
        "state.checkpoint_interval_s",
        id="checkpoint-interval-too-long",
    ),
    pytest.param({"state": {"checkpoint_path": ""}}, "state.checkpoint_path", id="empty-path"),
    pytest.param({"listen": None}, "listen", id="null-section"),
    pytest.param({"listen": [9480]}, "listen", id="list-section"),
    pytest.param({"listen": DSN}, "listen", id="dsn-in-the-wrong-place"),
    pytest.param({"database": {"dsn": 5432}}, "database.dsn", id="dsn-not-a-string"),
    pytest.param(
        {"database": {"dsn": f"{PASSWORD} is not a dsn"}}, "database.dsn", id="dsn-unparseable"
    ),
]


@pytest.mark.parametrize(("override", "key"), BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_key_without_the_password(
    override: dict[str, Any], key: str
) -> None:
    message = _error(_with_dsn(**override))

    assert message.startswith(f"{key}: ")


def test_a_rejected_value_is_shown_as_written() -> None:
    message = _error(_with_dsn(refresh={"interval_s": "abc"}))

    assert message == "refresh.interval_s: expected a number > 0 and <= 86400, got 'abc'"


def test_the_removed_startup_timeout_names_the_key_that_replaced_it() -> None:
    message = _error(_with_dsn(refresh={"startup_timeout_s": 300}))

    assert message.startswith("refresh.startup_timeout_s: removed")
    assert "refresh.backfill_statement_s" in message


def test_relative_checkpoint_and_web_config_paths_are_resolved_against_the_config_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "exporter.yaml"
    config.write_text(
        f"database: {{dsn: '{DSN}'}}\nstate: {{checkpoint_path: state/ckpt.json}}\n"
        "web: {config_file: web.yml}\n"
    )

    settings = load_settings(config, environ={})

    assert settings.state.checkpoint_path == tmp_path / "state" / "ckpt.json"
    assert settings.web.config_file == tmp_path / "web.yml"
    assert settings.state.checkpoint_interval_s == 60.0
    assert settings.refresh.backfill_statement_s == 2.0


def test_an_unknown_key_is_named_with_its_full_path() -> None:
    assert _error(_with_dsn(database={"poolmax": 4})) == "database.poolmax: unknown key"


def test_a_bad_dsn_from_the_environment_says_where_it_came_from() -> None:
    message = _error({}, environ={DSN_ENV: f"nonsense {PASSWORD}"})

    assert message.startswith("database.dsn (from FLEET_EXPORTER_DSN): ")


def test_top_level_that_is_not_a_mapping_is_rejected() -> None:
    assert "expected a mapping" in _error(["database"])


def test_staleness_below_interval_is_rejected_also_when_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"^refresh\.max_staleness_s: "):
        RefreshSettings(interval_s=10, max_staleness_s=5)


def test_neither_repr_nor_str_of_settings_shows_the_password(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("scrape-token-xyz\n")
    settings = settings_from_mapping(
        _with_dsn(prometheus={"bearer_token_file": str(token_file)}), environ={}
    )

    for text in (repr(settings), str(settings), repr(settings.database)):
        assert PASSWORD not in text
        assert "scrape-token-xyz" not in text
    assert settings.database.redacted_dsn == (
        "postgresql://exporter:***@127.0.0.1:5432/orchestrator"
    )


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:p%40ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=h user=u password=pw dbname=db", "host=h user=u password=*** dbname=db"),
        ("host=h password = pw dbname=db", "host=h password = *** dbname=db"),
        ("host=h password='p w' dbname=db", "host=h password=*** dbname=db"),
        (r"host=h password='it\'s' dbname=db", "host=h password=*** dbname=db"),
        ("host=h dbname=db", "host=h dbname=db"),
    ],
)
def test_redact_dsn_hides_the_password_in_url_and_keyword_forms(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exporter.yaml"
    path.write_text(text)
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    return _checked_message(caught.value)


def test_loading_a_file_reads_its_values(tmp_path: Path) -> None:
    path = _write(tmp_path, f"database:\n  dsn: {DSN}\nlisten:\n  port: 9999\n")

    assert load_settings(path, environ={}).listen.port == 9999


def test_a_file_with_every_line_commented_out_uses_the_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "# database:\n#   dsn: x\n")

    assert load_settings(path, environ={DSN_ENV: DSN}) == Settings(DatabaseSettings(dsn=DSN))


def test_invalid_yaml_gives_the_file_and_position_on_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, f"database:\n  dsn: {DSN}\n  pool_max: [4\nlisten: {{\n")

    message = _load_error(path)

    assert message.startswith(f"{path}: invalid YAML at line ")


def test_duplicate_keys_are_rejected_instead_of_the_last_one_winning(tmp_path: Path) -> None:
    path = _write(tmp_path, f"database:\n  dsn: {DSN}\n  pool_max: 4\n  pool_max: 8\n")

    assert "duplicate key 'pool_max'" in _load_error(path)


def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    assert _load_error(path).startswith(f"{path}: cannot read config file: ")


def test_a_file_whose_top_level_is_a_list_is_rejected(tmp_path: Path) -> None:
    assert "expected a mapping" in _load_error(_write(tmp_path, "- database\n"))


def test_bearer_token_is_read_from_its_file_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  s3cret-token\n")
    path = _write(
        tmp_path, f"database: {{dsn: '{DSN}'}}\nprometheus: {{bearer_token_file: token}}\n"
    )

    prometheus = load_settings(path, environ={}).prometheus

    assert prometheus.bearer_token == "s3cret-token"
    assert prometheus.bearer_token_file == tmp_path / "token"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        ("\n  \n", "is empty"),
        ("one\ntwo\n", "single token"),
    ],
)
def test_an_unusable_bearer_token_file_names_the_key(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)

    message = _error(_with_dsn(prometheus={"bearer_token_file": str(token_file)}))

    assert message.startswith("prometheus.bearer_token_file: ")
    assert problem in message


def test_a_directory_as_bearer_token_file_is_unreadable(tmp_path: Path) -> None:
    message = _error(_with_dsn(prometheus={"bearer_token_file": str(tmp_path)}))

    assert message.startswith("prometheus.bearer_token_file: cannot read ")


def test_the_example_file_is_exactly_the_defaults() -> None:
    assert load_settings(EXAMPLE, environ={}) == Settings(DatabaseSettings(dsn=EXAMPLE_DSN))


def _example_keys() -> dict[str, str]:
    """Each ``section.key`` of the example file, mapped to the line just above it."""
    keys: dict[str, str] = {}
    section, previous = "", ""
    for line in EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"(\w+):\s*", line):
            section = match.group(1)
        elif match := re.match(r"  (\w+):", line):
            keys[f"{section}.{match.group(1)}"] = previous
        previous = line.strip()
    return keys


def test_the_example_file_shows_every_key() -> None:
    assert sorted(_example_keys()) == sorted(_declared_keys())


def test_every_key_of_the_example_file_has_a_comment_above_it() -> None:
    uncommented = [key for key, above in _example_keys().items() if not above.startswith("#")]

    assert uncommented == []
