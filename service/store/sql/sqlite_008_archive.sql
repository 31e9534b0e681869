-- callback-relay schema (SQLite): archive jobs (service.archive_worker).
-- One per event whose outputs are archived before delivery, committed with the event; its
-- deliveries wait with next_attempt_at NULL until the job finishes.
-- status: pending | archived | failed. A pending job with lease_until in the future is running
-- (lease_token names the run that may finish it). progress: JSON list, one entry per output
-- (archived: key, content_type, bytes, sha256; failed: reason, error).
CREATE TABLE archive_jobs (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    provider        TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    deadline_at     REAL NOT NULL,
    lease_until     REAL,
    lease_token     TEXT,
    progress        TEXT NOT NULL DEFAULT '[]',
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX archive_jobs_due ON archive_jobs (next_attempt_at) WHERE status = 'pending';
CREATE INDEX archive_jobs_status ON archive_jobs (status, seq);
