-- Rate limits shared by the gateways of a distributed deployment: one token bucket per key and
-- limit ('requests' or 'tokens'), its level in millionths of a unit as of updated_at (µs).
-- Gateways lease slices of it (gateway/src/metering/shared_limits.rs); one gateway on its own
-- keeps its buckets in memory and never writes here.
CREATE TABLE limit_buckets (
    key_id      TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('requests', 'tokens')),
    level_micro BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (key_id, kind)
);

-- Each gateway's requests in flight per key with max_parallel_requests, written every 200 ms;
-- a gateway admits while its own count plus the others' fresh ones (updated_at within 2 s) is
-- under the limit.
CREATE TABLE limit_in_flight (
    instance   TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    n          BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (instance, key_id)
);
