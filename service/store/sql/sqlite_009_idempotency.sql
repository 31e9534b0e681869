-- callback-relay schema (SQLite): Idempotency-Key on the admin API (service.idempotency).
-- One row per (scope, key): scope is a SHA-256 of the credential presented, request_hash one
-- of the request (method, path, query, body). status is NULL while the first request runs
-- (claim names it); then status, content_type and body are its answer, replayed to requests
-- reusing the key until expires_at, after which retention deletes the row.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    claim        TEXT NOT NULL,
    claimed_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         BLOB,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
