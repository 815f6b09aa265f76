-- Routing policies: every published version (PolicyPublished) and every activation
-- (publishing activates; PolicyActivated re-activates an earlier version). The active policy
-- is the version of the newest activation. Derived from events; rebuilt by
-- `lumina projector rebuild`.

CREATE TABLE policies (
    version       BIGINT  PRIMARY KEY,
    snapshot_json TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    published_at  BIGINT  NOT NULL,
    event_id      TEXT    NOT NULL UNIQUE
);

CREATE TABLE policy_activations (
    event_id     TEXT    PRIMARY KEY,
    version      BIGINT  NOT NULL,
    activated_at BIGINT  NOT NULL,
    reason       TEXT    NOT NULL
);
CREATE INDEX policy_activations_newest ON policy_activations (activated_at, event_id);

-- A key's default routing preference (ApiKeyCreated v3).
ALTER TABLE api_keys ADD COLUMN routing_prefer TEXT;
