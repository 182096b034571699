-- Usage, audit trail and API keys. Times are milliseconds since the epoch (the
-- same in SQLite); ids are generated where the event happens, so an insert
-- replayed after a database outage is recognised and skipped.

CREATE TABLE usage (
    id                TEXT PRIMARY KEY,
    ts_ms             BIGINT NOT NULL,
    tenant            TEXT NOT NULL,
    subject           TEXT NOT NULL,
    model             TEXT NOT NULL,
    target            TEXT,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    latency_ms        BIGINT NOT NULL,
    status            INTEGER NOT NULL,
    reason            TEXT,
    request_id        TEXT
);
CREATE INDEX usage_ts ON usage (ts_ms);
CREATE INDEX usage_subject_ts ON usage (subject, ts_ms);
CREATE INDEX usage_model_ts ON usage (model, ts_ms);

CREATE TABLE audit_events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    ts_ms       BIGINT NOT NULL,
    tenant      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT,
    status      INTEGER,
    reason      TEXT,
    request_id  TEXT,
    policy_hash TEXT,
    policy_ids  TEXT NOT NULL,
    findings    TEXT NOT NULL,
    prompt      TEXT,
    details     TEXT NOT NULL
);
CREATE INDEX audit_events_ts ON audit_events (ts_ms);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP;
END;
$$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    prefix        TEXT NOT NULL UNIQUE,
    hash          TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    roles         TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT,
    revoked_by    TEXT
);
