-- The ledger: a double-entry journal (entries and their postings) and per-account balances.
-- An entry's postings are inserted first; the entry row is refused unless they exist and sum
-- to zero, and postings never change afterwards.

CREATE TABLE ledger_postings (
    entry_event_id TEXT   NOT NULL,
    line           BIGINT NOT NULL,
    ledger_account TEXT   NOT NULL,
    account_id     TEXT   NOT NULL,
    amount_nano    BIGINT NOT NULL,
    PRIMARY KEY (entry_event_id, line)
);
CREATE INDEX ledger_postings_account ON ledger_postings (ledger_account);

CREATE TABLE ledger_entries (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT   NOT NULL UNIQUE,
    kind        TEXT   NOT NULL CHECK (kind IN ('grant', 'hold', 'settle', 'expire')),
    account_id  TEXT   NOT NULL,
    request_id  TEXT,
    occurred_at BIGINT NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id);

CREATE TABLE ledger_balances (
    account_id     TEXT   PRIMARY KEY,
    available_nano BIGINT NOT NULL,
    held_nano      BIGINT NOT NULL,
    spent_nano     BIGINT NOT NULL,
    granted_nano   BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_postings WHERE entry_event_id = NEW.event_id)
       OR (SELECT SUM(amount_nano) FROM ledger_postings WHERE entry_event_id = NEW.event_id) <> 0 THEN
        RAISE EXCEPTION 'ledger entry % postings missing or not summing to zero', NEW.event_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_entries_balanced BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced();

CREATE FUNCTION ledger_postings_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'ledger postings are immutable' USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM ledger_entries WHERE event_id = NEW.entry_event_id) THEN
        RAISE EXCEPTION 'postings of a recorded entry cannot be added' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_postings_closed BEFORE INSERT OR UPDATE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_postings_closed();
