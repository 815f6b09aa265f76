-- The Responses API's stored responses (`POST /v1/responses` with `store`, the default): the
-- response object as last rendered and the conversation a `previous_response_id` continues
-- (OpenAI chat messages: the earlier turns, this turn's input and its answer). Written by the
-- gateway itself, not derived from events: a row exists (`in_progress`) before the upstream is
-- called and is final before the response's last byte, so the next turn works at once on any
-- gateway sharing this database. Not touched by `lumina projector rebuild`.

CREATE TABLE responses (
    id           TEXT    PRIMARY KEY,
    account_id   TEXT    NOT NULL,
    project_id   TEXT    NOT NULL,
    api_key_id   TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    previous_id  TEXT,
    status       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    response     TEXT    NOT NULL,
    conversation TEXT    NOT NULL
);
CREATE INDEX responses_account ON responses (account_id, created_at);
