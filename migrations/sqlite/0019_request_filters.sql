-- Indexes for the request log's filters (`/v1/requests`, `/admin/requests`, the dashboard), so a
-- rare status or key is found through an index instead of by walking the whole table newest
-- first: status alone, status within an account, and key. Derived from events like the table.
CREATE INDEX requests_outcome ON requests (outcome, request_id);
CREATE INDEX requests_account_outcome ON requests (account_id, outcome, request_id);
CREATE INDEX requests_key ON requests (api_key_id, request_id);
