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
