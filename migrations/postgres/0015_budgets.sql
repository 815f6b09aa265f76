-- Budgets (BudgetSet, BudgetRemoved, BudgetThresholdCrossed) in the read model: what each
-- limits and over which calendar periods, and the periods whose soft limit was crossed.
CREATE TABLE budgets (
    id              TEXT    PRIMARY KEY,
    account_id      TEXT    NOT NULL,
    scope           TEXT    NOT NULL CHECK (scope IN ('account', 'project', 'key')),
    scope_id        TEXT    NOT NULL,
    limit_nano      BIGINT  NOT NULL,
    soft_limit_nano BIGINT,
    period          TEXT    NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
    timezone        TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    removed_at      BIGINT
);
CREATE INDEX budgets_account ON budgets (account_id);

CREATE TABLE budget_thresholds (
    budget_id    TEXT    NOT NULL,
    period_start BIGINT  NOT NULL,
    crossed_at   BIGINT  NOT NULL,
    used_nano    BIGINT  NOT NULL,
    PRIMARY KEY (budget_id, period_start)
);

-- The ledger's spend by scope ('account:…', 'project:…', 'key:…') in quarter-hour buckets of
-- the settlements' occurred_at (every time zone's offset is a whole number of quarter hours,
-- so any calendar period is a range of buckets); bucket -1 holds the scope's all-time total.
-- Open holds name their project and key, so a budget can count what its scope holds.
CREATE TABLE ledger_spend (
    scope        TEXT    NOT NULL,
    bucket       BIGINT  NOT NULL,
    charged_nano BIGINT  NOT NULL,
    PRIMARY KEY (scope, bucket)
);
ALTER TABLE ledger_holds ADD COLUMN project_id TEXT;
ALTER TABLE ledger_holds ADD COLUMN api_key_id TEXT;

INSERT INTO ledger_spend (scope, bucket, charged_nano)
SELECT 'account:' || account_id, occurred_at - occurred_at % 900000000, SUM(charged_nano)
FROM ledger_entries WHERE charged_nano > 0
GROUP BY account_id, occurred_at - occurred_at % 900000000;
INSERT INTO ledger_spend (scope, bucket, charged_nano)
SELECT 'account:' || account_id, -1, SUM(charged_nano)
FROM ledger_entries WHERE charged_nano > 0 GROUP BY account_id;
