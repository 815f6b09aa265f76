-- Key controls (ApiKeyCreated v5, ApiKeyExpirySet): when the key stops authenticating (µs,
-- NULL: never), the paths and inbound APIs it may use (JSON arrays of names, NULL: all),
-- whether it only reads, and how many of its requests may be in flight at once on a gateway.
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
ALTER TABLE api_keys ADD COLUMN paths TEXT;
ALTER TABLE api_keys ADD COLUMN surfaces TEXT;
ALTER TABLE api_keys ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN max_parallel_requests INTEGER;
