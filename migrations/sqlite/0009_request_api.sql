-- The inbound API each request came in on (RequestRouted v4): chat_completions, messages,
-- embeddings. NULL for rows routed before v4 and not rebuilt since.
ALTER TABLE requests ADD COLUMN api TEXT;
