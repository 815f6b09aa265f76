-- PostgreSQL moved its journal checks to statement-level triggers in this migration. SQLite has
-- only row triggers, which are cheap there; its checks from 0002 stay as they are.
SELECT 1;
DROP INDEX ledger_postings_account;
