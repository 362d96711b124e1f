"""The operations pack checked offline: Prometheus config, rules and their unit tests,
Alertmanager routing, the Grafana dashboard and provisioning, runbooks and docker-compose,
each against the real checkers (promtool, amtool, PostgreSQL) and against each other.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest
import yaml

from exporter.catalogue import FAMILIES, exposed_sample_names
from exporter.cli import build_parser
from tests.support.db import FleetDatabase, insert_audit, insert_engine, insert_product
from tests.support.opspack import (
    ALERT_RULES,
    ALERT_TESTS,
    ALERTMANAGER_CONFIG,
    COMPOSE,
    DASHBOARD,
    DOCKERFILE,
    EXPORTER_CONFIG,
    EXPORTER_JOB,
    GRAFANA_DASHBOARDS,
    GRAFANA_DATASOURCES,
    PROMETHEUS_CONFIG,
    PROMETHEUS_OWN_SERIES,
    ROOT,
    RUNBOOK_BASE_URL,
    RUNBOOKS,
    code_blocks,
    dashboard_queries,
    find_tool,
    iter_panels,
    load_dashboard,
    load_rules,
    load_yaml,
    metric_names,
    recorded_dependencies,
    rules_of,
    run_tool,
    runbook_path,
    substitute_grafana_variables,
)

ALERT_NAME = re.compile(r"^EngineFleet(?:[A-Z][a-z0-9]+)+$")
SEVERITY_RECEIVERS = {"critical": "pager", "warning": "tickets"}
COMPOSE_SERVICES = {"postgres", "simulator", "exporter", "prometheus", "alertmanager", "grafana"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return find_tool("amtool")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return load_rules()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


def alerts() -> list[dict[str, Any]]:
    return rules_of(load_rules(), "alert")


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in iter_panels(dashboard) if panel["type"] != "row"]


# --- Prometheus configuration ------------------------------------------------------------


def test_prometheus_config_passes_promtool(promtool: str) -> None:
    run_tool(promtool, "check", "config", PROMETHEUS_CONFIG)


def test_prometheus_scrapes_the_exporter_on_its_scrape_path_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == [ALERT_RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exporter = jobs[EXPORTER_JOB]
    assert exporter["metrics_path"] == "/prometheus"
    assert exporter["static_configs"] == [{"targets": ["exporter:9480"]}]
    assert "prometheus" in jobs, "Prometheus should scrape itself"
    alertmanagers = config["alerting"]["alertmanagers"]
    assert alertmanagers == [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]


def _uncommented_authorization(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# authorization:")
    indent = lines[start].index("#")
    out = [*lines[:start], " " * indent + "authorization:"]
    index = start + 1
    while lines[index].startswith(" " * indent + "#   "):
        out.append(" " * indent + lines[index][indent + 2 :])
        index += 1
    return "\n".join([*out, *lines[index:]]) + "\n"


def test_commented_bearer_token_example_is_valid_once_uncommented(
    promtool: str, tmp_path: Path
) -> None:
    config_text = _uncommented_authorization(PROMETHEUS_CONFIG.read_text())
    authorization = yaml.safe_load(config_text)["scrape_configs"][0]["authorization"]
    assert authorization["type"] == "Bearer"
    (tmp_path / authorization["credentials_file"]).write_text("token\n")
    (tmp_path / ALERT_RULES.name).write_text(ALERT_RULES.read_text())
    (tmp_path / "prometheus.yml").write_text(config_text)
    run_tool(promtool, "check", "config", tmp_path / "prometheus.yml")


# --- Rules -------------------------------------------------------------------------------


def test_rules_pass_promtool(promtool: str) -> None:
    run_tool(promtool, "check", "rules", ALERT_RULES)


def test_rule_unit_tests_pass(promtool: str) -> None:
    run_tool(promtool, "test", "rules", ALERT_TESTS)


def test_there_are_recording_rules_and_the_alerts_the_operators_need() -> None:
    rules = load_rules()
    assert rules_of(rules, "record")
    assert {rule["alert"] for rule in rules_of(rules, "alert")} >= {
        "EngineFleetCritical",
        "EngineFleetDegraded",
        "EngineFleetCrashSpike",
        "EngineFleetAutoRestartGaveUp",
        "EngineFleetProvisioningStuck",
        "EngineFleetHealthLoopStalled",
        "EngineFleetNearQuota",
        "EngineFleetBootFailures",
        "EngineFleetExporterDataStale",
        "EngineFleetDatabaseDown",
        "EngineFleetExporterDown",
    }


@pytest.mark.parametrize("alert", alerts(), ids=lambda alert: alert["alert"])
def test_alert_is_named_labelled_and_annotated_for_the_person_it_wakes(
    alert: dict[str, Any],
) -> None:
    assert ALERT_NAME.match(alert["alert"]), "alerts are CamelCase with the EngineFleet prefix"
    assert alert["labels"]["severity"] in SEVERITY_RECEIVERS
    annotations = alert["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert re.search(r"\$labels\.|\$value", annotations["description"])
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}{alert['alert']}.md"
    assert runbook_path(annotations["runbook_url"]).is_file()


def _unit_cases() -> Iterator[dict[str, Any]]:
    for test in load_yaml(ALERT_TESTS)["tests"]:
        yield from test.get("alert_rule_test", [])


@pytest.mark.parametrize("alert", alerts(), ids=lambda alert: alert["alert"])
def test_alert_has_a_firing_and_a_quiet_unit_test(alert: dict[str, Any]) -> None:
    cases = [case for case in _unit_cases() if case["alertname"] == alert["alert"]]
    firing = [case for case in cases if case.get("exp_alerts")]
    assert firing, f"no unit test where {alert['alert']} fires"
    assert any(not case.get("exp_alerts") for case in cases), (
        f"no unit test where {alert['alert']} stays quiet"
    )
    for case in firing:
        for expected in case["exp_alerts"]:
            assert expected["exp_labels"]["severity"] == alert["labels"]["severity"]
            assert set(expected["exp_annotations"]) == set(alert["annotations"])


def test_unit_tests_load_the_shipped_rules_in_a_fixed_group_order() -> None:
    unit_tests = load_yaml(ALERT_TESTS)
    assert unit_tests["rule_files"] == [ALERT_RULES.name]
    groups = [group["name"] for group in load_rules()["groups"]]
    assert unit_tests["group_eval_order"] == groups


# --- Metric names ------------------------------------------------------------------------


def test_metric_name_extraction_skips_labels_functions_and_keywords() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{job="x", product=~"$product"}[5m])) / on (instance)'
        ' group_left(version) b:c:d offset 1m > bool 0.5 and count(up{x="y z"}) unless'
        " histogram_quantile(0.9, sum without (le) (c_total))"
    )
    assert metric_names(expr) == {"a_bucket", "b:c:d", "up", "c_total"}


def _known_names(rules: dict[str, Any]) -> frozenset[str]:
    return exposed_sample_names() | set(recorded_dependencies(rules)) | PROMETHEUS_OWN_SERIES


def test_every_metric_the_rules_read_is_exported_or_recorded(rules: dict[str, Any]) -> None:
    known = _known_names(rules)
    for rule in rules_of(rules, "record") + rules_of(rules, "alert"):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule['record']} reads unknown {unknown}"


def test_every_metric_the_dashboard_reads_is_exported_or_recorded(
    dashboard: dict[str, Any], rules: dict[str, Any]
) -> None:
    known = _known_names(rules)
    for query in dashboard_queries(dashboard):
        unknown = metric_names(substitute_grafana_variables(query.expr)) - known
        assert not unknown, f"{query.where} reads unknown {unknown}"


def test_dashboard_shows_every_exported_family(
    dashboard: dict[str, Any], rules: dict[str, Any]
) -> None:
    dependencies = recorded_dependencies(rules)
    read: set[str] = set()
    for query in dashboard_queries(dashboard):
        for name in metric_names(substitute_grafana_variables(query.expr)):
            read |= {name, *dependencies.get(name, ())}
    for family in FAMILIES:
        assert read & set(family.sample_names), f"no panel shows {family.name}"


# --- Dashboard ---------------------------------------------------------------------------


def test_dashboard_has_a_stable_identity_and_no_import_placeholders(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["uid"] == "engine-fleet"
    assert dashboard["title"]
    assert dashboard["tags"]
    assert dashboard["schemaVersion"] >= 36
    assert "__inputs" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text()


def test_dashboard_picks_its_prometheus_through_a_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in data_panels(dashboard):
        assert panel["datasource"] == wanted, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", wanted) == wanted, panel["title"]


def test_product_variable_lists_every_product_and_allows_all(dashboard: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    product = variables["product"]
    assert product["type"] == "query"
    assert product["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert product["query"]["query"] == "label_values(engine_fleet_engines, product)"
    assert product["multi"] is True
    assert product["includeAll"] is True
    assert product["allValue"] == ".*"
    assert "engine_fleet_engines" in exposed_sample_names()


def test_panels_have_unique_ids_and_non_overlapping_positions(dashboard: dict[str, Any]) -> None:
    panels = list(iter_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_range_in_the_dashboard_is_the_rate_interval(dashboard: dict[str, Any]) -> None:
    queries = dashboard_queries(dashboard)
    assert any("rate(" in query.expr for query in queries)
    for query in queries:
        for selector in re.findall(r"\[[^\]]*\]", query.expr):
            assert selector == "[$__rate_interval]", f"{query.where}: {selector}"


def test_every_dashboard_query_is_valid_promql(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    group = {
        "name": "dashboard-queries",
        "rules": [
            {"record": f"dashboard:query_{index}", "expr": substitute_grafana_variables(q.expr)}
            for index, q in enumerate(queries)
        ],
    }
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [group]}))
    run_tool(promtool, "check", "rules", rules_file)


def test_unknown_grafana_variables_are_not_silently_kept() -> None:
    with pytest.raises(ValueError, match=r"\$instance"):
        substitute_grafana_variables('up{instance="$instance"}')
    assert substitute_grafana_variables('x{p=~"${product:regex}"}[$__rate_interval]') == (
        'x{p=~".*"}[1m]'
    )


def test_failed_ratio_panel_draws_the_configured_critical_ratio(
    dashboard: dict[str, Any],
) -> None:
    critical = load_yaml(EXPORTER_CONFIG)["health"]["critical_failed_ratio"]
    panels = [
        panel
        for panel in data_panels(dashboard)
        if any("engine_fleet_failed_ratio" in target["expr"] for target in panel["targets"])
    ]
    assert panels
    for panel in panels:
        defaults = panel["fieldConfig"]["defaults"]
        steps = [step["value"] for step in defaults["thresholds"]["steps"]]
        assert critical in steps, panel["title"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"


def test_health_panel_maps_every_state_to_its_colour(dashboard: dict[str, Any]) -> None:
    panel = next(
        panel
        for panel in data_panels(dashboard)
        if any("engine_fleet_health" in target["expr"] for target in panel["targets"])
    )
    options = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    by_text = {option["text"]: option["color"] for option in options.values()}
    assert by_text == {"ok": "green", "degraded": "orange", "critical": "red"}


def test_grafana_provisions_prometheus_and_the_dashboard_directory(
    compose: dict[str, Any],
) -> None:
    (datasource,) = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname in compose["services"]
    assert f"{url.port}:{url.port}" in compose["services"][url.hostname]["ports"]
    (provider,) = load_yaml(GRAFANA_DASHBOARDS)["providers"]
    assert provider["type"] == "file"
    grafana_mounts = dict(_bind_mounts(compose["services"]["grafana"]))
    assert grafana_mounts[provider["options"]["path"]] == ROOT / "dashboards"
    assert grafana_mounts["/etc/grafana/provisioning"] == ROOT / "dashboards" / "provisioning"


# --- Alertmanager ------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool(amtool: str) -> None:
    run_tool(amtool, "check-config", ALERTMANAGER_CONFIG)


@pytest.mark.parametrize("alert", alerts(), ids=lambda alert: alert["alert"])
def test_alert_is_routed_to_the_receiver_of_its_severity(
    alert: dict[str, Any], amtool: str
) -> None:
    labels = {"alertname": alert["alert"], "product": "acme", **alert["labels"]}
    result = run_tool(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        *(f"{name}={value}" for name, value in labels.items()),
    )
    assert result.stdout.split() == [SEVERITY_RECEIVERS[alert["labels"]["severity"]]]


def test_alerts_are_grouped_per_alert_and_product_and_critical_silences_warnings() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    assert config["route"]["group_by"] == ["alertname", "product"]
    assert {
        "source_matchers": ['severity="critical"'],
        "target_matchers": ['severity="warning"'],
        "equal": ["product"],
    } in config["inhibit_rules"]


def test_receivers_ship_only_placeholder_webhooks() -> None:
    receivers = load_yaml(ALERTMANAGER_CONFIG)["receivers"]
    assert {receiver["name"] for receiver in receivers} == set(SEVERITY_RECEIVERS.values())
    for receiver in receivers:
        for webhook in receiver["webhook_configs"]:
            assert (urlsplit(webhook["url"]).hostname or "").endswith(".localhost")


# --- Runbooks ----------------------------------------------------------------------------


def test_every_runbook_belongs_to_an_alert_and_the_index_links_them_all() -> None:
    names = {alert["alert"] for alert in alerts()}
    pages = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == names
    index = (RUNBOOKS / "README.md").read_text()
    for name in names:
        assert f"({name}.md)" in index, f"README.md does not link {name}.md"


@pytest.mark.parametrize("name", sorted(alert["alert"] for alert in alerts()))
def test_runbook_has_every_section(name: str) -> None:
    headings = re.findall(r"^## (.+)$", (RUNBOOKS / f"{name}.md").read_text(), re.MULTILINE)
    assert headings == ["Meaning", "Impact", "Diagnosis", "Mitigation", "Escalate"]


def _runbook_sql() -> list[tuple[str, str]]:
    return [
        (f"{path.name}#{number}", block)
        for path in sorted(RUNBOOKS.glob("*.md"))
        for number, block in enumerate(code_blocks(path.read_text(), "sql"), start=1)
    ]


def test_runbooks_carry_sql_for_the_fleet_alerts() -> None:
    assert len(_runbook_sql()) >= 10


@pytest.fixture
def incident_db(fleet_db: FleetDatabase) -> FleetDatabase:
    """A product mid-incident: failed, stuck and running engines and their audit rows."""
    product = insert_product(fleet_db.dsn, slug="acme", api_key="pk-sept-acme-" + "k" * 40)
    for index, status in enumerate(["failed", "failed", "provisioning", "running", "sleeping"]):
        engine = insert_engine(
            fleet_db.dsn, product_id=product, user_id=f"user-{index}", status=status
        )
        for action in ("provision", "health_failed", "auto_restart_start", "auto_restart_gave_up"):
            insert_audit(
                fleet_db.dsn,
                product_id=product,
                engine_id=engine,
                user_id=f"user-{index}",
                action=action,
                duration_ms=4200 if action == "provision" else None,
            )
    return fleet_db


@pytest.mark.parametrize(("where", "sql"), _runbook_sql(), ids=[w for w, _ in _runbook_sql()])
def test_runbook_sql_runs_read_only_on_the_orchestrator_schema(
    incident_db: FleetDatabase, where: str, sql: str
) -> None:
    statement = sql.replace("%", "%%").replace(":'slug'", "%(slug)s")
    assert ":'" not in statement, f"{where} uses a psql variable other than :'slug'"
    connection = psycopg2.connect(incident_db.dsn)
    try:
        connection.set_session(readonly=True)
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, {"slug": "acme"})
            assert cursor.description is not None, f"{where} returns nothing to read"
    finally:
        connection.close()


# --- docker-compose and the image --------------------------------------------------------


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, Path]]:
    """(container path, host path) of each bind mount; named volumes are left out."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield target, (ROOT / source).resolve()


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == COMPOSE_SERVICES
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        if service.get("build"):
            assert service["build"] == "."
            assert DOCKERFILE.is_file()
    assert services["postgres"]["image"] == "postgres:15"
    assert services["simulator"]["build"] == services["exporter"]["build"] == "."


def test_compose_mounts_only_files_of_this_repository(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for target, source in _bind_mounts(service):
            assert source.exists(), f"{name} mounts missing {source} at {target}"
            assert source.is_relative_to(ROOT), f"{name} mounts {source} from outside"


def test_compose_publishes_the_usual_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, port in {
        "exporter": 9480,
        "prometheus": 9090,
        "alertmanager": 9093,
        "grafana": 3000,
    }.items():
        assert f"{port}:{port}" in services[name]["ports"], name


def test_compose_initialises_postgres_with_the_orchestrator_schema(
    compose: dict[str, Any],
) -> None:
    mounts = dict(_bind_mounts(compose["services"]["postgres"]))
    initdb = [
        source
        for target, source in sorted(mounts.items())
        if target.startswith("/docker-entrypoint-initdb.d/")
    ]
    sql = ROOT / "exporter" / "sql"
    assert initdb == [sql / "schema.sql", sql / "indexes.sql"], "schema first, then indexes"


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _postgres_dsn(compose: dict[str, Any]) -> str:
    env = compose["services"]["postgres"]["environment"]
    return (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{env['POSTGRES_DB']}"
    )


def test_compose_simulator_runs_the_demo_against_the_postgres_service(
    compose: dict[str, Any],
) -> None:
    args = build_parser().parse_args(_command(compose["services"]["simulator"]))
    assert args.command == "demo"
    assert args.dsn == _postgres_dsn(compose)


def test_compose_exporter_serves_the_mounted_config_on_the_postgres_service(
    compose: dict[str, Any],
) -> None:
    exporter = compose["services"]["exporter"]
    args = build_parser().parse_args(_command(exporter))
    assert args.command == "serve"
    assert dict(_bind_mounts(exporter))[str(args.config)] == EXPORTER_CONFIG
    assert exporter["environment"]["FLEET_EXPORTER_DSN"] == _postgres_dsn(compose)
    listen = load_yaml(EXPORTER_CONFIG)["listen"]
    assert (listen["host"], listen["port"]) == ("0.0.0.0", 9480)


def test_compose_mounts_the_prometheus_and_alertmanager_configs_they_read(
    compose: dict[str, Any],
) -> None:
    for name, config in {
        "prometheus": PROMETHEUS_CONFIG,
        "alertmanager": ALERTMANAGER_CONFIG,
    }.items():
        service = compose["services"][name]
        flag = next(arg for arg in _command(service) if arg.startswith("--config.file="))
        container_path = Path(flag.removeprefix("--config.file="))
        mounts = dict(_bind_mounts(service))
        host_dir = mounts[str(container_path.parent)]
        assert host_dir / container_path.name == config


def test_prometheus_targets_are_compose_services(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    targets += [
        target
        for alertmanager in config["alerting"]["alertmanagers"]
        for static in alertmanager["static_configs"]
        for target in static["targets"]
    ]
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host != "localhost":
            assert f"{port}:{port}" in compose["services"][host]["ports"], target


def test_compose_waits_only_on_services_that_report_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"


def test_image_runs_the_cli_entry_point_as_a_non_root_user() -> None:
    instructions = [
        line.split(None, 1)
        for line in DOCKERFILE.read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    by_name: dict[str, list[str]] = {}
    for name, argument in instructions:
        by_name.setdefault(name, []).append(argument)
    assert by_name["FROM"] == ["python:3.11-slim"]
    assert by_name["EXPOSE"] == ["9480"]
    assert by_name["USER"][-1] not in {"root", "0"}
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert by_name["ENTRYPOINT"] == ['["fleet-exporter"]']
    assert "fleet-exporter" in scripts
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for copy in by_name["COPY"]:
        for source in copy.split()[:-1]:
            assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignored}, source
