-- The journal's balance checks run once per statement over the rows it inserted (transition
-- tables) instead of once per row: the ledger inserts a batch's postings and entries with a
-- few multi-row statements, and per-row PL/pgSQL calls were its bottleneck.

DROP TRIGGER ledger_entries_balanced ON ledger_entries;
DROP TRIGGER ledger_postings_closed ON ledger_postings;
DROP FUNCTION ledger_entry_balanced();
DROP FUNCTION ledger_postings_closed();

-- Lookups go through the postings' and entries' primary-key indexes, row by row of the
-- statement; hash and merge joins would scan the whole journal once per batch.
CREATE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql
    SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    bad TEXT;
BEGIN
    SELECT n.event_id INTO bad
    FROM new_entries n
    WHERE COALESCE((SELECT SUM(p.amount_nano) FROM ledger_postings p WHERE p.entry_event_id = n.event_id), 1) <> 0
       OR NOT EXISTS (SELECT 1 FROM ledger_postings p WHERE p.entry_event_id = n.event_id)
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % postings missing or not summing to zero', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_balanced();

CREATE FUNCTION ledger_postings_closed() RETURNS trigger LANGUAGE plpgsql
    SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_postings n JOIN ledger_entries e ON e.event_id = n.entry_event_id) THEN
        RAISE EXCEPTION 'postings of a recorded entry cannot be added' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_postings_closed AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_closed();

CREATE FUNCTION ledger_postings_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger postings are immutable' USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER ledger_postings_immutable BEFORE UPDATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_immutable();

-- Postings are read by entry (primary key) or aggregated whole; an index by ledger account only
-- slowed every insert.
DROP INDEX ledger_postings_account;
