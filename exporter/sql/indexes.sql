-- Indexes engine-fleet-exporter needs to stay cheap on a large orchestrator database.
-- Safe to run on a live database: CONCURRENTLY builds without blocking the orchestrator's
-- writes, and IF NOT EXISTS makes the file idempotent. Run each statement outside a
-- transaction block (psql -f runs them one by one).

-- GET /engines?status=...: one index range per (product, status), already in page order.
-- (The refresh's per-status counts could be an index-only scan over it, but the health
-- loop's updates keep most heap pages from being all-visible, so PostgreSQL reads the heap.)
CREATE INDEX CONCURRENTLY IF NOT EXISTS engine_fleet_engines_product_status_created
    ON engines (product_id, status, created_at, engine_id);

-- GET /engines without a status filter: one index range per product, in page order.
CREATE INDEX CONCURRENTLY IF NOT EXISTS engine_fleet_engines_product_created
    ON engines (product_id, created_at, engine_id);
