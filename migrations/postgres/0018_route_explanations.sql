-- A request's route decision explained in full on /v1/requests/{id} and in traces: the
-- classifier inputs that weighed most (RequestRouted v2), the preference and bounds applied
-- and the classifier's own choice when the bounds moved it (v3). Derived from events; rebuilt
-- by `lumina projector rebuild`.
ALTER TABLE requests ADD COLUMN top_features TEXT;
ALTER TABLE requests ADD COLUMN prefer TEXT;
ALTER TABLE requests ADD COLUMN min_path TEXT;
ALTER TABLE requests ADD COLUMN max_path TEXT;
ALTER TABLE requests ADD COLUMN classified_path TEXT;
