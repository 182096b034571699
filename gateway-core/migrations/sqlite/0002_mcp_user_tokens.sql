-- Per-user OAuth for MCP connections (authorization code with PKCE).
-- Token values are AES-256-GCM sealed under the tenant's key from gateway-keys
-- (bound to tenant, connection and subject); only metadata is in clear.

CREATE TABLE mcp_user_tokens (
    tenant            TEXT NOT NULL,
    connection        TEXT NOT NULL,
    subject           TEXT NOT NULL,
    sealed            TEXT NOT NULL,
    has_refresh_token INTEGER NOT NULL,
    scope             TEXT,
    expires_at_ms     BIGINT,
    created_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL,
    PRIMARY KEY (tenant, connection, subject)
);

-- Pending authorizations: one row per /start, deleted by its callback (single use).
-- Only a SHA-256 of the state is kept; the PKCE verifier is sealed.
CREATE TABLE mcp_oauth_states (
    state_hash      TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    connection      TEXT NOT NULL,
    subject         TEXT NOT NULL,
    sealed_verifier TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    expires_at_ms   BIGINT NOT NULL
);
CREATE INDEX mcp_oauth_states_expires ON mcp_oauth_states (expires_at_ms);
