-- The per-statement balance check read each new entry's postings twice, and the planner ran
-- the NOT EXISTS as a hashed subplan: a scan of the whole postings table per batch, slower as
-- the journal grew. One lateral aggregate per new entry, through the postings' primary key.
CREATE OR REPLACE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql
    SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    bad TEXT;
BEGIN
    SELECT n.event_id INTO bad
    FROM new_entries n
    CROSS JOIN LATERAL (
        SELECT COUNT(*) AS lines, COALESCE(SUM(p.amount_nano), 0) AS total
        FROM ledger_postings p WHERE p.entry_event_id = n.event_id
    ) s
    WHERE s.lines = 0 OR s.total <> 0
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % postings missing or not summing to zero', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
