-- Model Fusion in the read model.
-- The role of each upstream call in its request (UpstreamAttempted v2): `panel`, `judge` or
-- `synthesizer` in a Fusion request; NULL for an ordinary request's attempts.
ALTER TABLE request_attempts ADD COLUMN role TEXT;
-- Keys barred from Fusion (ApiKeyCreated v4): 1 refuses lumina-fusion and keeps lumina-auto
-- off the panel.
ALTER TABLE api_keys ADD COLUMN fusion_barred BIGINT NOT NULL DEFAULT 0;
