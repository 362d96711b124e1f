"""The shipped SQL scripts, split and parsed in one place."""

from __future__ import annotations

import pytest

from exporter.queries import recommended_index_names
from exporter.sqlfiles import RecommendedIndex, parse_indexes, recommended_indexes, sql_statements


def test_the_shipped_index_script_declares_the_two_listing_indexes() -> None:
    names = [index.name for index in recommended_indexes()]
    assert names == [
        "engine_fleet_engines_product_status_created",
        "engine_fleet_engines_product_created",
    ]
    assert recommended_index_names() == names
    assert all(index.sql.startswith("CREATE INDEX CONCURRENTLY") for index in recommended_indexes())


def test_statements_are_split_on_semicolons_and_comment_lines_are_dropped() -> None:
    script = "-- a comment; with a semicolon\nSELECT 1;\n\n  -- indented comment\nSELECT\n  2 ;\n"
    assert sql_statements(script) == ["SELECT 1", "SELECT\n  2"]


def test_an_index_statement_yields_its_name_and_its_whole_text() -> None:
    script = "-- why\nCREATE INDEX CONCURRENTLY IF NOT EXISTS by_owner\n    ON engines (user_id);\n"
    assert parse_indexes(script) == [
        RecommendedIndex(
            "by_owner", "CREATE INDEX CONCURRENTLY IF NOT EXISTS by_owner\n    ON engines (user_id)"
        )
    ]


@pytest.mark.parametrize(
    ("statement", "why"),
    [
        ("CREATE INDEX by_owner ON engines (user_id)", "blocks the orchestrator's writes"),
        ("CREATE INDEX CONCURRENTLY by_owner ON engines (user_id)", "fails when run twice"),
        ("DROP INDEX CONCURRENTLY IF EXISTS by_owner", "not an index creation"),
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS", "names no index"),
    ],
)
def test_an_index_script_with_anything_else_is_refused_naming_the_statement(
    statement: str, why: str
) -> None:
    script = f"CREATE INDEX CONCURRENTLY IF NOT EXISTS fine ON engines (status);\n{statement};\n"
    with pytest.raises(ValueError, match="not a CREATE INDEX CONCURRENTLY IF NOT EXISTS") as raised:
        parse_indexes(script)
    assert statement.splitlines()[0] in str(raised.value), why
