-- The fingerprint of the key-hashing secret (auth.key_secret) every gateway on this database
-- must share: HMAC-SHA-256 under the secret of a fixed text, which says nothing of the secret.
-- Written by the first gateway to start; a gateway whose secret gives another fingerprint
-- refuses to start instead of refusing every key the others issued.
CREATE TABLE key_secret_fingerprint (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT    NOT NULL,
    recorded_at INTEGER  NOT NULL
);
