-- Indexes engine-fleet-exporter needs to stay cheap on a large orchestrator database.
-- Safe to run on a live database: CONCURRENTLY builds without blocking the orchestrator's
-- writes, and IF NOT EXISTS makes the file idempotent. Run each statement outside a
-- transaction block (psql -f runs them one by one).

-- GET /engines?status=...: one index range per (product, status), already in page order,
-- and the per-status counts of each refresh as an index-only scan.
CREATE INDEX CONCURRENTLY IF NOT EXISTS engine_fleet_engines_product_status_created
    ON engines (product_id, status, created_at, engine_id);

-- GET /engines without a status filter: one index range per product, in page order.
CREATE INDEX CONCURRENTLY IF NOT EXISTS engine_fleet_engines_product_created
    ON engines (product_id, created_at, engine_id);
