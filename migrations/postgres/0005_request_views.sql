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
    stream                 BIGINT,
    policy_version         BIGINT,
    features               TEXT,
    scores                 TEXT,
    candidates             TEXT,
    hold_nano              BIGINT,
    prompt_tokens_estimate BIGINT,
    max_tokens             BIGINT,
    routed_at              BIGINT,
    outcome                TEXT,
    provider               TEXT,
    deployment             TEXT,
    prompt_tokens          BIGINT,
    completion_tokens      BIGINT,
    cached_tokens          BIGINT,
    reasoning_tokens       BIGINT,
    usage_estimated        BIGINT,
    charge_nano            BIGINT,
    price_table_version    TEXT,
    latency_us             BIGINT,
    ttft_us                BIGINT,
    attempts               BIGINT,
    error_class            TEXT,
    settled_at             BIGINT,
    feedback_score         DOUBLE PRECISION,
    feedback_label         TEXT,
    feedback_comment       TEXT,
    feedback_at            BIGINT
);
CREATE INDEX requests_account ON requests (account_id, request_id);
CREATE INDEX requests_settled ON requests (settled_at, request_id);

CREATE TABLE request_attempts (
    request_id     TEXT    NOT NULL,
    attempt        BIGINT  NOT NULL,
    event_id       TEXT    NOT NULL UNIQUE,
    provider       TEXT    NOT NULL,
    deployment     TEXT    NOT NULL,
    upstream_model TEXT    NOT NULL,
    started_at     BIGINT  NOT NULL,
    ttfb_us        BIGINT,
    duration_us    BIGINT  NOT NULL,
    outcome        TEXT    NOT NULL,
    error_class    TEXT,
    http_status    BIGINT,
    fell_back      BIGINT  NOT NULL,
    PRIMARY KEY (request_id, attempt)
);

CREATE TABLE usage_minutes (
    account_id       TEXT    NOT NULL,
    minute           BIGINT  NOT NULL,
    project_id       TEXT    NOT NULL,
    api_key_id       TEXT    NOT NULL,
    path             TEXT    NOT NULL,
    provider         TEXT    NOT NULL,
    input_tokens     BIGINT  NOT NULL,
    output_tokens    BIGINT  NOT NULL,
    cached_tokens    BIGINT  NOT NULL,
    reasoning_tokens BIGINT  NOT NULL,
    requests         BIGINT  NOT NULL,
    credits_nano     BIGINT  NOT NULL,
    PRIMARY KEY (account_id, minute, project_id, api_key_id, path, provider)
);

CREATE TABLE route_stats (
    path          TEXT    NOT NULL,
    deployment    TEXT    NOT NULL,
    task_class    TEXT    NOT NULL,
    requests      BIGINT  NOT NULL,
    completed     BIGINT  NOT NULL,
    failed        BIGINT  NOT NULL,
    charge_nano   BIGINT  NOT NULL,
    attempts      BIGINT  NOT NULL,
    errors        BIGINT  NOT NULL,
    timeouts      BIGINT  NOT NULL,
    fallbacks     BIGINT  NOT NULL,
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
