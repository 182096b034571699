-- Tenants may share one database: API keys carry their tenant like usage rows
-- and audit events do, and every admin query filters by it. Keys created before
-- this migration have no tenant ('') and are no longer found: re-create them
-- (only pre-release databases have such keys).
ALTER TABLE api_keys ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX api_keys_tenant_created ON api_keys (tenant, created_at_ms);
CREATE INDEX usage_tenant_ts ON usage (tenant, ts_ms);
CREATE INDEX audit_events_tenant_seq ON audit_events (tenant, seq);
