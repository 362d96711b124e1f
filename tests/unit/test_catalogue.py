"""The catalogue's types: a family's samples follow from its kind, its help from two fields."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from exporter.catalogue import (
    FAMILIES,
    FLEET_FAMILIES,
    SELF_FAMILIES,
    ExpositionInput,
    Family,
    FleetHistogram,
    RefreshNote,
    Sample,
    SelfFamily,
)


def _nothing(data: ExpositionInput) -> Iterable[Sample]:
    return ()


@pytest.mark.parametrize(
    ("help_text", "refreshed", "documentation"),
    [
        pytest.param("Engines per status.", None, "Engines per status.", id="no-note"),
        pytest.param(
            "Engines per status.",
            RefreshNote.SENTENCE,
            "Engines per status. Refreshed every 2.5 s.",
            id="sentence",
        ),
        pytest.param(
            "Duration of the last refresh.",
            RefreshNote.ASIDE,
            "Duration of the last refresh (refreshes run every 2.5 s).",
            id="aside",
        ),
    ],
)
def test_the_exposed_help_is_the_meaning_and_the_refresh_note(
    help_text: str, refreshed: RefreshNote | None, documentation: str
) -> None:
    family = SelfFamily(
        name="x", kind="gauge", help=help_text, labels=(), samples=_nothing, refreshed=refreshed
    )
    assert family.documentation(2.5) == documentation


def test_each_family_is_fleet_data_or_a_self_metric_and_never_both() -> None:
    assert len(FLEET_FAMILIES) + len(SELF_FAMILIES) == len(FAMILIES)
    assert set(FLEET_FAMILIES).isdisjoint(SELF_FAMILIES)
    assert [f.name for f in FAMILIES if isinstance(f, FleetHistogram)] == [
        "engine_fleet_boot_duration_seconds"
    ]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_no_help_text_carries_a_placeholder_or_a_note(family: Family) -> None:
    help_text = family.help
    assert "{" not in help_text
    assert "Refreshed every" not in help_text
    assert "refreshes run every" not in help_text
    assert help_text.endswith(".")
