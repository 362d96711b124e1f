"""The local operations stack's configs are the shipped files with only what must differ
rewritten, and the demo receiver turns each Alertmanager notification into one line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.demo.receiver import BadNotification, notification_line, receiver_app
from exporter.demo.stack import (
    ALERTMANAGER_CONFIG,
    DEMO_TIMING,
    EXPORTER_JOB,
    PROMETHEUS_CONFIG,
    Commands,
    OpsPackError,
    OpsStack,
    Ports,
    Timing,
    format_duration,
    load_yaml,
    local_alertmanager_config,
    local_prometheus_config,
    local_rules,
    parse_duration,
)

PORTS = Ports(exporter=19480, prometheus=19090, alertmanager=19093)
RULES = PROMETHEUS_CONFIG.parent / "alerts.yml"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("12h", 43200), ("1d", 86400), ("0s", 0)],
)
def test_prometheus_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "5min", "1.5m", "-1s", "5m "])
def test_a_malformed_duration_is_a_clear_error(text: str) -> None:
    with pytest.raises(OpsPackError, match="is not a Prometheus duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30s"), (0.1, "100ms"), (4320, "4320s"), (0, "1ms"), (1.5, "1500ms")]
)
def test_durations_format_to_the_millisecond(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_demo_rules_shorten_every_for_and_leave_the_rules_as_shipped() -> None:
    shipped = load_yaml(RULES)
    local = local_rules(shipped, DEMO_TIMING)
    shipped_rules = [rule for group in shipped["groups"] for rule in group["rules"]]
    local_rules_ = [rule for group in local["groups"] for rule in group["rules"]]
    assert len(local_rules_) == len(shipped_rules)
    timed = ("for", "keep_firing_for")
    with_for = 0
    for before, after in zip(shipped_rules, local_rules_, strict=True):
        assert {k: v for k, v in after.items() if k not in timed} == {
            k: v for k, v in before.items() if k not in timed
        }
        with_for += "for" in before
        for key in timed:
            assert (key in after) == (key in before)
            if key in before:
                assert parse_duration(after[key]) == parse_duration(before[key]) / 10
    assert with_for >= 3
    assert load_yaml(RULES) == shipped, "the shipped rules were modified in place"


def test_a_group_interval_follows_the_scrape_interval() -> None:
    shipped = {"groups": [{"name": "g", "interval": "1m", "rules": [{"record": "r", "expr": "1"}]}]}
    assert local_rules(shipped, DEMO_TIMING)["groups"][0]["interval"] == "5s"


def test_prometheus_config_points_every_shipped_job_at_loopback() -> None:
    shipped = load_yaml(PROMETHEUS_CONFIG)
    rules = [Path("/stack/alerts.yml")]
    config = local_prometheus_config(shipped, ports=PORTS, rule_files=rules, timing=DEMO_TIMING)
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["evaluation_interval"] == "5s"
    assert config["rule_files"] == ["/stack/alerts.yml"]
    alertmanagers = config["alerting"]["alertmanagers"]
    assert alertmanagers == [{"static_configs": [{"targets": ["127.0.0.1:19093"]}]}]
    targets = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert targets == {
        EXPORTER_JOB: [{"targets": ["127.0.0.1:19480"]}],
        "prometheus": [{"targets": ["127.0.0.1:19090"]}],
        "alertmanager": [{"targets": ["127.0.0.1:19093"]}],
    }
    exporter = next(j for j in config["scrape_configs"] if j["job_name"] == EXPORTER_JOB)
    assert exporter["metrics_path"] == "/prometheus"


def test_without_alertmanager_prometheus_neither_scrapes_nor_alerts_it() -> None:
    shipped = load_yaml(PROMETHEUS_CONFIG)
    ports = Ports(exporter=1, prometheus=2, alertmanager=None)
    config = local_prometheus_config(shipped, ports=ports, rule_files=[], timing=DEMO_TIMING)
    assert "alerting" not in config
    assert [job["job_name"] for job in config["scrape_configs"]] == [EXPORTER_JOB, "prometheus"]


def test_the_exporter_job_loses_its_bearer_token_the_demo_does_not_set() -> None:
    shipped = {
        "scrape_configs": [
            {
                "job_name": EXPORTER_JOB,
                "authorization": {"type": "Bearer", "credentials_file": "token"},
                "static_configs": [{"targets": ["exporter:9480"]}],
            }
        ]
    }
    config = local_prometheus_config(shipped, ports=PORTS, rule_files=[], timing=DEMO_TIMING)
    assert "authorization" not in config["scrape_configs"][0]


def test_a_shipped_job_without_a_local_target_is_refused() -> None:
    shipped = load_yaml(PROMETHEUS_CONFIG)
    shipped["scrape_configs"].append({"job_name": "node", "static_configs": []})
    with pytest.raises(OpsPackError, match="job 'node' has no local target"):
        local_prometheus_config(shipped, ports=PORTS, rule_files=[], timing=DEMO_TIMING)


def test_a_config_without_the_exporter_job_is_refused() -> None:
    shipped = {"scrape_configs": [{"job_name": "prometheus"}]}
    with pytest.raises(OpsPackError, match=f"no {EXPORTER_JOB} job"):
        local_prometheus_config(shipped, ports=PORTS, rule_files=[], timing=DEMO_TIMING)


def test_alertmanager_config_keeps_the_routing_and_sends_every_receiver_to_the_local_one() -> None:
    shipped = load_yaml(ALERTMANAGER_CONFIG)
    shipped["receivers"].append({"name": "mail", "email_configs": [{"to": "sre@example.org"}]})
    config = local_alertmanager_config(
        shipped, receiver_url="http://127.0.0.1:1234", timing=DEMO_TIMING
    )
    assert config["inhibit_rules"] == shipped["inhibit_rules"]
    assert {k: v for k, v in config["route"].items() if k.endswith(("_wait", "_interval"))} == {
        "group_wait": "3s",
        "group_interval": "30s",
        "repeat_interval": "4320s",
    }
    assert config["route"]["group_by"] == shipped["route"]["group_by"]
    children = config["route"]["routes"]
    assert [c["matchers"] for c in children] == [c["matchers"] for c in shipped["route"]["routes"]]
    assert [c["repeat_interval"] for c in children] == ["360s", "8640s"]
    assert config["receivers"] == [
        {
            "name": name,
            "webhook_configs": [{"url": f"http://127.0.0.1:1234/{name}", "send_resolved": True}],
        }
        for name in ("pager", "tickets", "mail")
    ]


@pytest.mark.parametrize(
    ("commands", "reason"),
    [
        (Commands(prometheus=None, alertmanager="/usr/bin/alertmanager"), "needs Prometheus"),
        (Commands(prometheus="/usr/bin/prometheus", alertmanager=None), "without an Alertmanager"),
    ],
)
def test_a_stack_missing_its_binaries_is_refused(commands: Commands, reason: str) -> None:
    with pytest.raises(OpsPackError, match=reason):
        OpsStack(commands=commands, ports=PORTS, receiver_url="", timing=DEMO_TIMING)


def test_missing_binaries_are_named_in_one_line_with_the_debian_packages() -> None:
    assert Commands(None, None).missing_line() == (
        "Prometheus and Alertmanager not installed: the demo runs without Prometheus and"
        " Alertmanager (install the Debian packages prometheus prometheus-alertmanager,"
        " or run make demo as root)"
    )
    assert Commands("/p", None).missing_line() == (
        "Alertmanager not installed: the demo runs without Alertmanager"
        " (install the Debian package prometheus-alertmanager, or run make demo as root)"
    )
    assert Commands(None, "/a").missing_line() == (
        "Prometheus not installed: the demo runs without Prometheus and Alertmanager"
        " (install the Debian package prometheus, or run make demo as root)"
    )
    assert Commands("/p", "/a").missing_line() is None


def test_a_missing_ops_pack_fails_with_one_line_and_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    stack = OpsStack(
        commands=Commands("/bin/true", None),
        ports=Ports(exporter=1, prometheus=2, alertmanager=None),
        receiver_url="",
        timing=Timing(scrape_interval_s=1, speedup=1),
        prometheus_config=tmp_path / "config" / "prometheus" / "prometheus.yml",
    )
    with pytest.raises(OpsPackError) as raised:
        stack.start()
    message = str(raised.value)
    assert "\n" not in message
    assert "prometheus.yml is missing" in message
    assert "make demo" in message
    assert stack.processes == []
    assert list(temp.iterdir()) == []


def test_a_shipped_rule_file_is_rewritten_beside_the_config(tmp_path: Path) -> None:
    config_dir = tmp_path / "prometheus"
    config_dir.mkdir()
    (config_dir / "rules.yml").write_text(
        yaml.safe_dump(
            {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "1", "for": "10m"}]}]}
        )
    )
    (config_dir / "prometheus.yml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yml"], "scrape_configs": [{"job_name": EXPORTER_JOB}]}
        )
    )
    stack = OpsStack(
        commands=Commands("/bin/true", None),
        ports=Ports(exporter=1, prometheus=2, alertmanager=None),
        receiver_url="",
        timing=DEMO_TIMING,
        prometheus_config=config_dir / "prometheus.yml",
    )
    out = tmp_path / "out"
    out.mkdir()
    prometheus, alertmanager = stack.write_configs(out)
    assert alertmanager is None
    written = yaml.safe_load(prometheus.read_text())
    assert written["rule_files"] == [str(out / "rules.yml")]
    assert yaml.safe_load((out / "rules.yml").read_text())["groups"][0]["rules"][0]["for"] == "60s"


def _notification(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "version": "4",
        "status": "firing",
        "receiver": "pager",
        "groupLabels": {"alertname": "EngineFleetCritical", "product": "acme"},
        "commonLabels": {
            "alertname": "EngineFleetCritical",
            "product": "acme",
            "severity": "critical",
            "instance": "127.0.0.1:9480",
        },
        "commonAnnotations": {"summary": "Engine fleet acme is critical"},
        "alerts": [{"status": "firing", "labels": {}, "annotations": {}}],
    }
    payload.update(overrides)
    return payload


def test_a_notification_is_one_line_naming_the_alert_and_its_group() -> None:
    assert notification_line("pager", _notification()) == (
        "pager: FIRING EngineFleetCritical product=acme severity=critical:"
        " Engine fleet acme is critical"
    )


def test_a_resolved_group_of_several_alerts_says_so() -> None:
    line = notification_line(
        "tickets",
        _notification(status="resolved", alerts=[{}, {}], commonAnnotations={}),
    )
    assert line == "tickets: RESOLVED EngineFleetCritical product=acme severity=critical (2 alerts)"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "not a JSON object"),
        ({"status": "firing"}, "not an Alertmanager webhook notification"),
        (_notification(alerts="x"), "not an Alertmanager webhook notification"),
        (_notification(groupLabels=["x"]), "must be JSON objects"),
    ],
)
def test_a_malformed_notification_is_refused(payload: Any, reason: str) -> None:
    with pytest.raises(BadNotification, match=reason):
        notification_line("pager", payload)


async def test_the_receiver_prints_each_notification_and_refuses_bad_bodies(
    aiohttp_client: Any,
) -> None:
    lines: list[str] = []
    client = await aiohttp_client(receiver_app(lines.append))
    response = await client.post("/pager", data=json.dumps(_notification()))
    assert response.status == 200
    assert lines == [
        "pager: FIRING EngineFleetCritical product=acme severity=critical:"
        " Engine fleet acme is critical"
    ]
    for body in (b"not json", b"\xff\xfe", json.dumps({"alerts": []}).encode()):
        response = await client.post("/pager", data=body)
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "INVALID_NOTIFICATION"
    assert (await client.get("/pager")).status == 405
    assert len(lines) == 1
