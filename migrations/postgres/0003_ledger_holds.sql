-- Holds and settlements: each hold's life (open → settled | expired), what a settlement
-- charged and released, and a daily history of closing balances.

ALTER TABLE ledger_entries ADD COLUMN charged_nano BIGINT;
ALTER TABLE ledger_entries ADD COLUMN released_nano BIGINT;

CREATE TABLE ledger_holds (
    request_id  TEXT    PRIMARY KEY,
    account_id  TEXT    NOT NULL,
    amount_nano BIGINT  NOT NULL CHECK (amount_nano > 0),
    placed_at   BIGINT  NOT NULL,
    ttl_ms      BIGINT  NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('open', 'settled', 'expired')),
    closed_at   BIGINT
);
CREATE INDEX ledger_holds_open ON ledger_holds (status, placed_at);

CREATE TABLE ledger_daily (
    account_id     TEXT    NOT NULL,
    day            TEXT    NOT NULL,
    available_nano BIGINT  NOT NULL,
    held_nano      BIGINT  NOT NULL,
    spent_nano     BIGINT  NOT NULL,
    granted_nano   BIGINT  NOT NULL,
    PRIMARY KEY (account_id, day)
);
