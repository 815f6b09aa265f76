-- The projector's eval results: one row per EvalCompleted event (`lumina eval run`), the
-- score of an item's answer on the path and deployment that gave it. `lumina policy build`
-- reads scores per path × task class from here. Derived from events; rebuilt by
-- `lumina projector rebuild`.

CREATE TABLE eval_results (
    event_id          TEXT    PRIMARY KEY,
    account_id        TEXT    NOT NULL,
    project_id        TEXT,
    api_key_id        TEXT,
    run_id            TEXT    NOT NULL,
    dataset           TEXT    NOT NULL,
    item_id           TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    deployment        TEXT,
    task_class        TEXT,
    routed_task_class TEXT,
    check_kind        TEXT    NOT NULL,
    score             DOUBLE PRECISION NOT NULL,
    passed            BIGINT  NOT NULL,
    cost_nano         BIGINT  NOT NULL,
    latency_ms        DOUBLE PRECISION NOT NULL,
    request_id        TEXT    NOT NULL,
    judge_request_id  TEXT,
    judge_cost_nano   BIGINT,
    completed_at      BIGINT  NOT NULL
);
CREATE INDEX eval_results_request ON eval_results (request_id);
CREATE INDEX eval_results_path_class ON eval_results (path, task_class);
CREATE INDEX eval_results_run ON eval_results (account_id, run_id);
