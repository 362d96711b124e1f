"""The SQL scripts the package ships, read and split in one place.

``schema.sql`` is the orchestrator's schema (for the tests, the benchmarks and the demo);
``indexes.sql`` declares the indexes the exporter recommends. The exporter's checks read the
index names from here and the throwaway clusters apply the statements from here, so the file
stays the only list of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_INDEX_STATEMENT = re.compile(r"CREATE INDEX CONCURRENTLY IF NOT EXISTS\s+(\w+)\s")


@dataclass(frozen=True, slots=True)
class RecommendedIndex:
    name: str
    sql: str
    """One ``CREATE INDEX CONCURRENTLY`` statement: it runs outside a transaction block."""


def sql_file(name: str) -> str:
    return resources.files("exporter").joinpath(f"sql/{name}").read_text(encoding="utf-8")


def sql_statements(script: str) -> list[str]:
    """The statements of ``script``, without its ``--`` comment lines."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def parse_indexes(script: str) -> list[RecommendedIndex]:
    """Each statement of an index script with the name it creates; ValueError for a statement
    that is not an idempotent, non-blocking index creation."""
    indexes = []
    for statement in sql_statements(script):
        match = _INDEX_STATEMENT.match(statement)
        if match is None:
            first_line = statement.splitlines()[0]
            raise ValueError(
                f"not a CREATE INDEX CONCURRENTLY IF NOT EXISTS statement: {first_line}"
            )
        indexes.append(RecommendedIndex(match.group(1), statement))
    return indexes


def recommended_indexes() -> list[RecommendedIndex]:
    """The indexes declared in ``exporter/sql/indexes.sql``."""
    return parse_indexes(sql_file("indexes.sql"))
