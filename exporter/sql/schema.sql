-- The orchestrator's tables, as the orchestrator creates them. The exporter only reads these;
-- this file exists so tests, benchmarks and the demo can build a faithful database.

CREATE TABLE IF NOT EXISTS products (
    id            UUID PRIMARY KEY,
    slug          TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    api_key_hash  TEXT NOT NULL UNIQUE,
    policy        JSONB NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS engines (
    engine_id        UUID PRIMARY KEY,
    product_id       UUID NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL,
    status           TEXT NOT NULL,
    url              TEXT,
    port             INTEGER,
    engine_version   TEXT NOT NULL,
    engine_key_hash  TEXT,
    engine_key_enc   TEXT,
    boot_duration_ms INTEGER,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_health_at   TIMESTAMPTZ,
    UNIQUE (product_id, user_id)
);

CREATE TABLE IF NOT EXISTS audit_log (
    id          BIGSERIAL PRIMARY KEY,
    timestamp   TIMESTAMPTZ NOT NULL DEFAULT now(),
    product_id  UUID,
    user_id     TEXT,
    engine_id   UUID,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL DEFAULT 'system',
    metadata    JSONB NOT NULL DEFAULT '{}',
    duration_ms INTEGER
);

CREATE INDEX IF NOT EXISTS idx_audit_log_timestamp ON audit_log (timestamp);
CREATE INDEX IF NOT EXISTS idx_audit_log_action ON audit_log (action);
