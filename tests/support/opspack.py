"""The operations pack as data, for the tests that check it offline and against a live stack.

Owns where the pack's files are, how the Prometheus tools are found, and how the PromQL in the
Grafana dashboard and the rule files is pulled out: every query with Grafana's variables
resolved to values Prometheus accepts, and the metric names each query reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.demo.stack import ALERTMANAGER_CONFIG as ALERTMANAGER_CONFIG
from exporter.demo.stack import EXPORTER_JOB as EXPORTER_JOB
from exporter.demo.stack import PROMETHEUS_CONFIG

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "engine-fleet.json"
GRAFANA_DATASOURCES = ROOT / "dashboards" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = ROOT / "dashboards" / "provisioning" / "dashboards" / "engine-fleet.yml"
ALERT_RULES = PROMETHEUS_CONFIG.parent / "alerts.yml"
ALERT_TESTS = PROMETHEUS_CONFIG.parent / "alerts_test.yml"
EXPORTER_CONFIG = ROOT / "config" / "exporter.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

RUNBOOK_BASE_URL = (
    "https://github.com/engine-fleet-exporter/engine-fleet-exporter/blob/main/docs/runbooks/"
)
PROMETHEUS_OWN_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
"""Series Prometheus writes itself, which no exporter has to expose."""

GRAFANA_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "product": ".*",
}
"""What each Grafana variable in a query becomes when Prometheus runs it directly."""


def find_tool(*names: str) -> str:
    """The first of ``names`` on PATH; under CI a missing tool fails instead of skipping."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    reason = f"{names[0]} is required (Debian packages prometheus, prometheus-alertmanager)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a checker; a non-zero exit fails the test with the tool's own words."""
    result = subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(str(a) for a in args)} exited {result.returncode}:\n"
        f"{result.stdout}{result.stderr}"
    )
    return result


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(list(dashboard.get("panels", [])))


@dataclass(frozen=True)
class Query:
    """One PromQL query of the dashboard, as written in it."""

    where: str
    """Panel title and query refId, or the annotation's name: what a failure points at."""
    expr: str


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """The PromQL of every panel target and every annotation that has one."""
    found = [
        Query(f"panel {panel.get('title', '?')!r} query {target.get('refId', '?')}", target["expr"])
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    found += [
        Query(f"annotation {annotation.get('name', '?')!r}", annotation["expr"])
        for annotation in dashboard.get("annotations", {}).get("list", [])
        if annotation.get("expr")
    ]
    return found


def panel_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Only the panels' queries: the ones that must return data on a live stack."""
    return [query for query in dashboard_queries(dashboard) if query.where.startswith("panel ")]


_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\$(?P<plain>\w+)|\[\[(?P<old>\w+)\]\]")


def substitute_grafana_variables(expr: str) -> str:
    """The query as Prometheus would receive it; an unknown variable is an error, not a hole."""

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain") or match.group("old")
        if name not in GRAFANA_VARIABLES:
            raise ValueError(f"no test value for Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = load_yaml(ALERT_RULES)
    return rules


def rules_of(rules: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """The rules of one kind, ``alert`` or ``record``, over all groups in file order."""
    return [rule for group in rules["groups"] for rule in group["rules"] if kind in rule]


def runbook_path(runbook_url: str) -> Path:
    """The repository file a ``runbook_url`` annotation points at."""
    assert runbook_url.startswith(RUNBOOK_BASE_URL), runbook_url
    return RUNBOOKS / runbook_url.removeprefix(RUNBOOK_BASE_URL)


_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"[0-9.][0-9A-Za-z_.]*")
_CLOSING = {"{": "}", "[": "]", "(": ")"}


def _skip_string(expr: str, start: int) -> int:
    quote = expr[start]
    index = start + 1
    while index < len(expr) and expr[index] != quote:
        index += 2 if expr[index] == "\\" and quote != "`" else 1
    return index + 1


def _skip_group(expr: str, start: int) -> int:
    """Index after the bracket group opening at ``start``; strings inside are skipped whole."""
    closing = _CLOSING[expr[start]]
    index = start + 1
    while index < len(expr) and expr[index] != closing:
        index = _skip_string(expr, index) if expr[index] in "\"'`" else index + 1
    return index + 1


def _next_significant(expr: str, index: int) -> int:
    while index < len(expr) and expr[index].isspace():
        index += 1
    return index


def metric_names(expr: str) -> frozenset[str]:
    """The metric names a PromQL expression reads.

    A small lexer rather than a parser: label matchers, range selectors, strings, label lists
    of ``by``/``on``/..., function and aggregation names, keywords and numbers are skipped;
    every other identifier is a metric name.
    """
    names: set[str] = set()
    index = 0
    while index < len(expr):
        char = expr[index]
        if char.isspace():
            index += 1
        elif char == "#":
            newline = expr.find("\n", index)
            index = len(expr) if newline < 0 else newline
        elif char in "\"'`":
            index = _skip_string(expr, index)
        elif char in "{[":
            index = _skip_group(expr, index)
        elif identifier := _IDENTIFIER.match(expr, index):
            word = identifier.group()
            index = identifier.end()
            following = _next_significant(expr, index)
            opens_call = following < len(expr) and expr[following] == "("
            if word.lower() in _LABEL_LISTS and opens_call:
                index = _skip_group(expr, following)
            elif not opens_call and word.lower() not in _KEYWORDS:
                names.add(word)
        elif number := _NUMBER.match(expr, index):
            index = number.end()
        else:
            index += 1
    return frozenset(names)


def recorded_dependencies(rules: Mapping[str, Any]) -> Mapping[str, frozenset[str]]:
    """For each recording rule, the metric names its expression reads."""
    return {rule["record"]: metric_names(rule["expr"]) for rule in rules_of(rules, "record")}


_CODE_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<language>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def code_blocks(markdown: str, language: str) -> list[str]:
    """The fenced code blocks of one language, list-item indentation removed."""
    blocks = []
    for match in _CODE_BLOCK.finditer(markdown):
        if match.group("language") == language:
            indent = len(match.group("indent"))
            blocks.append("".join(line[indent:] for line in match.group("body").splitlines(True)))
    return blocks
