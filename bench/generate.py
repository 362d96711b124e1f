"""Generate a large orchestrator database quickly, entirely inside PostgreSQL.

Products, engines and audit rows are produced by ``generate_series`` in a handful of
``INSERT ... SELECT`` statements, before the indexes are built, so a 1M-engine /
20M-row database takes minutes, not hours. Product ``n`` has the platform key
``pk-sept-bench-product-<n>-...`` (see ``bench_key``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import psycopg2

from exporter.sqlfiles import recommended_indexes

AUDIT_ACTIONS: tuple[tuple[str, float], ...] = (
    ("health_check", 0.55),
    ("provision", 0.08),
    ("destroy", 0.07),
    ("wake", 0.1),
    ("start", 0.04),
    ("stop", 0.04),
    ("health_failed", 0.03),
    ("auto_restart_start", 0.03),
    ("auto_restart_success", 0.025),
    ("auto_restart_failed", 0.004),
    ("auto_restart_gave_up", 0.001),
    ("admit_denied", 0.02),
    ("rotate_key", 0.005),
    ("policy_update", 0.005),
)


def bench_key(product: int) -> str:
    """At least three digits, never truncated: product 1000 is not product 100."""
    return f"pk-sept-bench-product-{product:03d}-" + "k" * 24


@dataclass(frozen=True)
class Scale:
    engines: int
    audit_rows: int
    products: int

    @property
    def label(self) -> str:
        return (
            f"{self.engines:,} engines / {self.audit_rows:,} audit rows / {self.products} products"
        )


def _action_case() -> str:
    """A CASE over a uniform random number picking an action with the weights above."""
    total = sum(weight for _, weight in AUDIT_ACTIONS)
    branches, running = [], 0.0
    for action, weight in AUDIT_ACTIONS[:-1]:
        running += weight / total
        branches.append(f"WHEN r < {running:.6f} THEN '{action}'")
    return f"CASE {' '.join(branches)} ELSE '{AUDIT_ACTIONS[-1][0]}' END"


PRODUCTS_SQL = """
INSERT INTO products (id, slug, display_name, api_key_hash, policy, created_at)
SELECT md5('bench-product-' || n)::uuid,
       'product-' || lpad(n::text, greatest(3, length(n::text)), '0'),
       'Bench product ' || n,
       encode(sha256(convert_to('pk-sept-bench-product-'
                                || lpad(n::text, greatest(3, length(n::text)), '0') || '-'
                                || repeat('k', 24), 'UTF8')), 'hex'),
       '{"max_engines": 100000, "rate_limit_rpm": 6000}',
       now() - interval '400 days'
FROM generate_series(1, %(products)s) AS n
"""

# Products get a skewed share of the fleet: product 1 holds LEAD_SHARE of it (the large
# tenant the /engines benchmark pages through), the others split the rest with weight 1/n.
LEAD_SHARE = 0.5

ENGINES_SQL = """
WITH weights AS (
    SELECT n,
           CASE WHEN %(products)s = 1 THEN 1.0
                WHEN n = 1 THEN %(lead_share)s
                ELSE (1 - %(lead_share)s) * (1.0 / n) / sum(1.0 / n) FILTER (WHERE n > 1) OVER ()
           END AS share
    FROM generate_series(1, %(products)s) n
), bounds AS (
    SELECT array_agg(upper ORDER BY n) AS uppers
    FROM (SELECT n, sum(share) OVER (ORDER BY n) AS upper FROM weights) AS cumulative
)
INSERT INTO engines (engine_id, product_id, user_id, status, url, port, engine_version,
                     engine_key_hash, engine_key_enc, boot_duration_ms, created_at, last_health_at)
SELECT md5('bench-engine-' || e.i)::uuid,
       md5('bench-product-' || least(%(products)s,
                                     1 + width_bucket(e.pick, (SELECT uppers FROM bounds))))::uuid,
       'user-' || e.i,
       CASE WHEN e.s < 0.90 THEN 'running' WHEN e.s < 0.95 THEN 'sleeping'
            WHEN e.s < 0.975 THEN 'stopped' WHEN e.s < 0.99 THEN 'failed'
            WHEN e.s < 0.997 THEN 'provisioning' ELSE 'destroying' END,
       'http://10.0.' || (e.i %% 250) || '.' || (e.i %% 200) || ':8080',
       20000 + (e.i %% 40000),
       'september-engine:2.3.0',
       md5('key-' || e.i), md5('enc-' || e.i),
       (exp(ln(4000) + 0.35 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())))::int,
       now() - random() * interval '365 days',
       now() - random() * interval '60 seconds'
FROM (SELECT i, random() AS pick, random() AS s FROM generate_series(1, %(engines)s) AS i) AS e
"""

AUDIT_SQL = f"""
INSERT INTO audit_log (timestamp, product_id, user_id, engine_id, action, actor, duration_ms)
SELECT ts, product_id, 'user-' || u, md5('bench-engine-' || u)::uuid, action, 'system',
       CASE WHEN action = 'provision' AND random() < 0.97
            THEN (exp(ln(4000) + 0.35 * sqrt(-2 * ln(1 - random()))
                      * cos(2 * pi() * random())))::int END
FROM (
    SELECT now() - (%(span_s)s * (1 - i::float8 / %(rows)s)) * interval '1 second' AS ts,
           md5('bench-product-' || (1 + (i * 7919) %% %(products)s))::uuid AS product_id,
           1 + (i * 104729) %% greatest(%(engines)s, 1) AS u,
           {_action_case()} AS action
    FROM (SELECT i, random() AS r FROM generate_series(%(first)s::bigint, %(last)s) AS i) AS g
) AS rows
"""

AUDIT_BATCH = 2_000_000


def generate(dsn: str, scale: Scale, *, history_days: float = 365.0) -> None:
    """Fill an empty schema (tables without the recommended indexes) at ``scale``."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(PRODUCTS_SQL, {"products": scale.products})
            cursor.execute(
                ENGINES_SQL,
                {"products": scale.products, "engines": scale.engines, "lead_share": LEAD_SHARE},
            )
            for first in range(1, scale.audit_rows + 1, AUDIT_BATCH):
                cursor.execute(
                    AUDIT_SQL,
                    {
                        "first": first,
                        "last": min(first + AUDIT_BATCH - 1, scale.audit_rows),
                        "rows": scale.audit_rows,
                        "products": scale.products,
                        "engines": scale.engines,
                        "span_s": history_days * 86400,
                    },
                )
            for index in recommended_indexes():
                cursor.execute(index.sql)
            cursor.execute("VACUUM ANALYZE")
    finally:
        connection.close()


def append_audit_rows(dsn: str, scale: Scale, rows: int) -> None:
    """Simulate ``rows`` new orchestrator writes, timestamped now."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                AUDIT_SQL,
                {
                    "first": 1,
                    "last": rows,
                    "rows": rows,
                    "products": scale.products,
                    "engines": scale.engines,
                    "span_s": 1,
                },
            )
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True, help="database with the schema, no indexes yet")
    parser.add_argument("--engines", type=int, default=1_000_000)
    parser.add_argument("--audit-rows", type=int, default=20_000_000)
    parser.add_argument("--products", type=int, default=20)
    args = parser.parse_args()
    scale = Scale(args.engines, args.audit_rows, args.products)
    started = time.monotonic()
    generate(args.dsn, scale)
    print(f"generated {scale.label} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
