-- The dashboard's series: per hour (unix seconds of its start) × path × account, and once more
-- under account '' for every account together, the settled requests, how many did not complete,
-- their charges, and latency and time-to-first-token sketches (DDSketch, as route_stats keeps
-- them). Derived from RequestSettled like the other views; `lumina projector rebuild` fills it
-- for history older than the migration.
CREATE TABLE path_hours (
    account_id  TEXT    NOT NULL,
    hour        INTEGER NOT NULL,
    path        TEXT    NOT NULL,
    requests    INTEGER NOT NULL,
    failed      INTEGER NOT NULL,
    charge_nano INTEGER NOT NULL,
    latency     TEXT    NOT NULL,
    ttft        TEXT    NOT NULL,
    PRIMARY KEY (account_id, hour, path)
);
