-- The API key a request was made with (`kubernetes:<name>` for an ApiKey object, the
-- key's id for an admin-minted one; NULL for a JWT), so spend can be grouped by key.
ALTER TABLE usage ADD COLUMN api_key TEXT;
CREATE INDEX usage_api_key_ts ON usage (api_key, ts_ms);
