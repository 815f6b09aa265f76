-- The projector's request views: one row per request (route decision, settlement, feedback),
-- its upstream attempts, per-minute usage rollups for /v1/usage, and route statistics with
-- latency sketches. All derived from events; rebuilt by `lumina projector rebuild`.

CREATE TABLE requests (
    request_id             TEXT    PRIMARY KEY,
    account_id             TEXT    NOT NULL,
    project_id             TEXT,
    api_key_id             TEXT,
    requested_model        TEXT,
    path                   TEXT,
    task_class             TEXT,
    stream                 INTEGER,
    policy_version         INTEGER,
    features               TEXT,
    scores                 TEXT,
    candidates             TEXT,
    hold_nano              INTEGER,
    prompt_tokens_estimate INTEGER,
    max_tokens             INTEGER,
    routed_at              INTEGER,
    outcome                TEXT,
    provider               TEXT,
    deployment             TEXT,
    prompt_tokens          INTEGER,
    completion_tokens      INTEGER,
    cached_tokens          INTEGER,
    reasoning_tokens       INTEGER,
    usage_estimated        INTEGER,
    charge_nano            INTEGER,
    price_table_version    TEXT,
    latency_us             INTEGER,
    ttft_us                INTEGER,
    attempts               INTEGER,
    error_class            TEXT,
    settled_at             INTEGER,
    feedback_score         REAL,
    feedback_label         TEXT,
    feedback_comment       TEXT,
    feedback_at            INTEGER
);
CREATE INDEX requests_account ON requests (account_id, request_id);
CREATE INDEX requests_settled ON requests (settled_at, request_id);

CREATE TABLE request_attempts (
    request_id     TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    event_id       TEXT    NOT NULL UNIQUE,
    provider       TEXT    NOT NULL,
    deployment     TEXT    NOT NULL,
    upstream_model TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    ttfb_us        INTEGER,
    duration_us    INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    error_class    TEXT,
    http_status    INTEGER,
    fell_back      INTEGER NOT NULL,
    PRIMARY KEY (request_id, attempt)
);

CREATE TABLE usage_minutes (
    account_id       TEXT    NOT NULL,
    minute           INTEGER NOT NULL,
    project_id       TEXT    NOT NULL,
    api_key_id       TEXT    NOT NULL,
    path             TEXT    NOT NULL,
    provider         TEXT    NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    cached_tokens    INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    requests         INTEGER NOT NULL,
    credits_nano     INTEGER NOT NULL,
    PRIMARY KEY (account_id, minute, project_id, api_key_id, path, provider)
);

CREATE TABLE route_stats (
    path          TEXT    NOT NULL,
    deployment    TEXT    NOT NULL,
    task_class    TEXT    NOT NULL,
    requests      INTEGER NOT NULL,
    completed     INTEGER NOT NULL,
    failed        INTEGER NOT NULL,
    charge_nano   INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    errors        INTEGER NOT NULL,
    timeouts      INTEGER NOT NULL,
    fallbacks     INTEGER NOT NULL,
    latency       TEXT    NOT NULL,
    ttft          TEXT    NOT NULL,
    PRIMARY KEY (path, deployment, task_class)
);

-- Prompts and answers of requests whose key was created with store_content (only those keys'
-- requests ever write RequestContentRecorded). Read by `lumina eval export`.
CREATE TABLE request_content (
    request_id      TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    messages_json   TEXT NOT NULL,
    answer          TEXT,
    tool_calls_json TEXT
);
