-- callback-relay schema, version 1 (SQLite)
CREATE TABLE relay_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE callback_urls (
    id         TEXT PRIMARY KEY,
    provider   TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Every update received, emitted or superseded; duplicates are not stored twice.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    provider    TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    progress    INTEGER,
    dedup_key   TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL,          -- emitted | superseded
    received_at REAL NOT NULL,
    url_id      TEXT,
    body        TEXT NOT NULL,          -- the CloudEvent, exactly as delivered
    raw_body    BLOB NOT NULL           -- the callback body, exactly as received
);
CREATE INDEX events_task ON events (provider, task_id);
CREATE INDEX events_received ON events (received_at);

-- The terminal status of each task that has one: later updates are superseded.
CREATE TABLE tasks (
    provider        TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    terminal_status TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    PRIMARY KEY (provider, task_id)
) WITHOUT ROWID;

CREATE TABLE subscribers (
    id                  TEXT PRIMARY KEY,
    url                 TEXT NOT NULL,
    description         TEXT,
    providers           TEXT,           -- JSON list, NULL = all
    event_types         TEXT,           -- JSON list of types or "generation.*", NULL = all
    enabled             INTEGER NOT NULL DEFAULT 1,
    disabled_reason     TEXT,
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_expires_at REAL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);

-- One row per event x subscriber. status: pending | succeeded | failed.
-- A pending row with lease_until in the future is in flight.
CREATE TABLE deliveries (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL,
    subscriber_id   TEXT NOT NULL,
    task_key        TEXT NOT NULL,      -- provider/task_id: per-task order is kept per subscriber
    status          TEXT NOT NULL,
    attempt_count   INTEGER NOT NULL DEFAULT 0,
    cycle_attempts  INTEGER NOT NULL DEFAULT 0,  -- attempts in the current retry cycle
    next_attempt_at REAL,
    lease_until     REAL,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_line ON deliveries (subscriber_id, task_key, seq) WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries (status, updated_at);
CREATE INDEX deliveries_event ON deliveries (event_id);

-- Append-only log of HTTP attempts.
CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      TEXT NOT NULL,
    attempted_at     REAL NOT NULL,
    trigger          TEXT NOT NULL,     -- scheduled | replay
    status_code      INTEGER,
    latency_ms       REAL NOT NULL,
    error            TEXT,
    response_excerpt TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
