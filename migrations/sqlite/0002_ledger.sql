-- The ledger: a double-entry journal (entries and their postings) and per-account balances.
-- An entry's postings are inserted first; the entry row is refused unless they exist and sum
-- to zero, and postings never change afterwards.

CREATE TABLE ledger_postings (
    entry_event_id TEXT    NOT NULL,
    line           INTEGER NOT NULL,
    ledger_account TEXT    NOT NULL,
    account_id     TEXT    NOT NULL,
    amount_nano    INTEGER NOT NULL,
    PRIMARY KEY (entry_event_id, line)
);
CREATE INDEX ledger_postings_account ON ledger_postings (ledger_account);

CREATE TABLE ledger_entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind IN ('grant', 'hold', 'settle', 'expire')),
    account_id  TEXT    NOT NULL,
    request_id  TEXT,
    occurred_at INTEGER NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id);

CREATE TABLE ledger_balances (
    account_id     TEXT    PRIMARY KEY,
    available_nano INTEGER NOT NULL,
    held_nano      INTEGER NOT NULL,
    spent_nano     INTEGER NOT NULL,
    granted_nano   INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TRIGGER ledger_entries_balanced BEFORE INSERT ON ledger_entries
WHEN NOT EXISTS (SELECT 1 FROM ledger_postings WHERE entry_event_id = NEW.event_id)
  OR (SELECT SUM(amount_nano) FROM ledger_postings WHERE entry_event_id = NEW.event_id) <> 0
BEGIN
    SELECT RAISE(ABORT, 'ledger entry postings missing or not summing to zero');
END;

CREATE TRIGGER ledger_postings_closed BEFORE INSERT ON ledger_postings
WHEN EXISTS (SELECT 1 FROM ledger_entries WHERE event_id = NEW.entry_event_id)
BEGIN
    SELECT RAISE(ABORT, 'postings of a recorded entry cannot be added');
END;

CREATE TRIGGER ledger_postings_immutable BEFORE UPDATE ON ledger_postings
BEGIN
    SELECT RAISE(ABORT, 'ledger postings are immutable');
END;
