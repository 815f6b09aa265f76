-- Holds and settlements: each hold's life (open → settled | expired), what a settlement
-- charged and released, and a daily history of closing balances.

ALTER TABLE ledger_entries ADD COLUMN charged_nano INTEGER;
ALTER TABLE ledger_entries ADD COLUMN released_nano INTEGER;

CREATE TABLE ledger_holds (
    request_id  TEXT    PRIMARY KEY,
    account_id  TEXT    NOT NULL,
    amount_nano INTEGER NOT NULL CHECK (amount_nano > 0),
    placed_at   INTEGER NOT NULL,
    ttl_ms      INTEGER NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('open', 'settled', 'expired')),
    closed_at   INTEGER
);
CREATE INDEX ledger_holds_open ON ledger_holds (status, placed_at);

CREATE TABLE ledger_daily (
    account_id     TEXT    NOT NULL,
    day            TEXT    NOT NULL,
    available_nano INTEGER NOT NULL,
    held_nano      INTEGER NOT NULL,
    spent_nano     INTEGER NOT NULL,
    granted_nano   INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)
);
