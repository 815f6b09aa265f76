-- The spine: consumer bookkeeping and the read models the gateway loads (accounts, projects,
-- API keys). Every row here is derived from the event log and can be rebuilt from it.

CREATE TABLE consumer_positions (
    consumer     TEXT    NOT NULL,
    stream       TEXT    NOT NULL,
    partition_id BIGINT  NOT NULL,
    next_offset  BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (consumer, stream, partition_id)
);

CREATE TABLE consumer_applied_events (
    consumer   TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    applied_at BIGINT  NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE dead_letters (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer     TEXT    NOT NULL,
    stream       TEXT    NOT NULL,
    partition_id BIGINT  NOT NULL,
    msg_offset   BIGINT  NOT NULL,
    reason       TEXT    NOT NULL,
    payload      BYTEA   NOT NULL,
    recorded_at  BIGINT  NOT NULL,
    UNIQUE (consumer, stream, partition_id, msg_offset)
);

CREATE TABLE accounts (
    id                 TEXT    PRIMARY KEY,
    name               TEXT    NOT NULL,
    default_project_id TEXT    NOT NULL,
    granted_nano       BIGINT  NOT NULL DEFAULT 0,
    created_at         BIGINT  NOT NULL,
    opened_event_id    TEXT    NOT NULL UNIQUE
);

CREATE TABLE projects (
    id         TEXT    PRIMARY KEY,
    account_id TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX projects_account ON projects (account_id);

CREATE TABLE credit_grants (
    event_id    TEXT    PRIMARY KEY,
    account_id  TEXT    NOT NULL,
    amount_nano BIGINT  NOT NULL CHECK (amount_nano > 0),
    reason      TEXT,
    granted_by  TEXT    NOT NULL,
    granted_at  BIGINT  NOT NULL
);
CREATE INDEX credit_grants_account ON credit_grants (account_id);

CREATE TABLE api_keys (
    id               TEXT    PRIMARY KEY,
    account_id       TEXT    NOT NULL,
    project_id       TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    key_hash         TEXT    NOT NULL UNIQUE,
    key_prefix       TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    store_content    BIGINT  NOT NULL,
    rpm              BIGINT,
    tpm              BIGINT,
    created_at       BIGINT  NOT NULL,
    revoked_at       BIGINT,
    updated_at       BIGINT  NOT NULL,
    created_event_id TEXT    NOT NULL UNIQUE
);
CREATE INDEX api_keys_account ON api_keys (account_id);
