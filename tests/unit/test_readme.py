"""The README's reference tables cannot drift from the code."""

import dataclasses
import re
from pathlib import Path
from typing import get_type_hints

import yaml

from exporter.catalogue import markdown_table
from exporter.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _config_keys() -> set[str]:
    """Every dotted key of the settings (the token read from the token file is not a key)."""
    return {
        f"{section}.{key.name}"
        for section, cls in get_type_hints(Settings).items()
        for key in dataclasses.fields(cls)
        if key.name != "bearer_token"
    }


def test_readme_metric_table_is_the_catalogue() -> None:
    assert markdown_table() in README


def test_readme_configuration_table_lists_every_key() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", README, flags=re.MULTILINE))
    assert documented == _config_keys()


def test_readme_alert_table_is_the_rules_file() -> None:
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yml").read_text())
    shipped = {
        (rule["alert"], rule["labels"]["severity"], rule.get("for", "—"))
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    documented = {
        (name, severity, duration)
        for name, severity, duration in re.findall(
            r"^\| `(EngineFleet\w+)` \| (\w+) \| .+ \| (\S+) \|$", README, flags=re.MULTILINE
        )
    }
    assert documented == shipped


def _answered_codes() -> set[str]:
    """Every error code the service can answer, read from where the answers are made."""
    from exporter.errors import HTTP_ERROR_CODES

    source = "\n".join(path.read_text() for path in (ROOT / "exporter").glob("*.py"))
    made = re.findall(r"\b(?:ApiError|Rejection)\(\s*\d{3},\s*\"([A-Z_]+)\"", source)
    return {*made, *(code for code, _ in HTTP_ERROR_CODES.values())}


def test_readme_error_table_lists_every_code_the_service_answers() -> None:
    table = README[README.index("| status | code | when |") :]
    table = table[: table.index("\n\n")]
    rows = re.findall(r"^\| [0-9 /]+ \| ([^|]+) \|", table, flags=re.MULTILINE)
    documented = {code for row in rows for code in re.findall(r"`([A-Z_]+)`", row)}
    assert documented == _answered_codes()
