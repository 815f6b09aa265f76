-- Admin keys with roles (AdminKeyCreated, AdminKeyRevoked): only the keyed hash of each key,
-- its role and who issued and revoked it. The bootstrap admin key is not among them.
CREATE TABLE admin_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'operator', 'finance', 'viewer')),
    key_hash   TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at INTEGER NOT NULL,
    created_by TEXT,
    revoked_at INTEGER,
    revoked_by TEXT
);
