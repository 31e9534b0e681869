-- callback-relay schema (PostgreSQL): Idempotency-Key on the admin API (service.idempotency).
-- One row per (scope, key): scope is a SHA-256 of the credential presented, request_hash one
-- of the request (method, path, query, body). status is NULL while the first request runs
-- (claim names it); then status, content_type and body are its answer, replayed to requests
-- reusing the key, on any replica, until expires_at, after which retention deletes the row.
CREATE TABLE idempotency_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    claim        text NOT NULL,
    claimed_at   double precision NOT NULL,
    expires_at   double precision NOT NULL,
    status       integer,
    content_type text,
    body         bytea,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
