-- callback-relay schema, version 1 (PostgreSQL)
-- The same tables as sqlite_001_initial.sql. Times are Unix seconds in double precision, like
-- SQLite's REAL, so both stores share the conversions to the API's RFC 3339 strings.
CREATE TABLE relay_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE callback_urls (
    id         text PRIMARY KEY,
    provider   text NOT NULL,
    metadata   text NOT NULL,                -- JSON, kept as text: returned byte for byte
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL
);

-- Every update received, emitted or superseded; duplicates are not stored twice.
CREATE TABLE events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    provider    text NOT NULL,
    task_id     text NOT NULL,
    status      text NOT NULL,
    progress    integer,
    dedup_key   text NOT NULL UNIQUE,         -- ingest relies on it: ON CONFLICT (dedup_key)
    state       text NOT NULL CHECK (state IN ('emitted', 'superseded')),
    received_at double precision NOT NULL,
    url_id      text,
    body        text NOT NULL,                -- the CloudEvent, exactly as delivered
    raw_body    bytea NOT NULL                -- the callback body, exactly as received
);
CREATE INDEX events_task ON events (provider, task_id);
CREATE INDEX events_received ON events (received_at);

-- The terminal status of each task that has one: later updates are superseded.
CREATE TABLE tasks (
    provider        text NOT NULL,
    task_id         text NOT NULL,
    terminal_status text NOT NULL,
    event_id        text NOT NULL,
    PRIMARY KEY (provider, task_id)
);

CREATE TABLE subscribers (
    seq                 bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- listing order, cursors
    id                  text PRIMARY KEY,
    url                 text NOT NULL,
    description         text,
    providers           text[],               -- NULL = all
    event_types         text[],               -- types or "generation.*"; NULL = all
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text,
    secret              text NOT NULL,
    previous_secret     text,
    previous_expires_at double precision,
    created_at          double precision NOT NULL,
    updated_at          double precision NOT NULL
);

-- One row per event x subscriber. status: pending | succeeded | failed.
-- A pending row with lease_until in the future is in flight.
CREATE TABLE deliveries (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              text NOT NULL UNIQUE,
    event_id        text NOT NULL,
    subscriber_id   text NOT NULL,
    task_key        text NOT NULL,            -- provider/task_id: per-task order per subscriber
    status          text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempt_count   integer NOT NULL DEFAULT 0,
    cycle_attempts  integer NOT NULL DEFAULT 0,  -- attempts in the current retry cycle
    next_attempt_at double precision,
    lease_until     double precision,
    last_error      text,
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL
);
-- claim_due walks this in order; the pending set stays small however large the table grows.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, seq) WHERE status = 'pending';
-- The per-task order check: is there an earlier pending delivery in this line?
CREATE INDEX deliveries_line ON deliveries (subscriber_id, task_key, seq)
    WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries (status, updated_at);
CREATE INDEX deliveries_event ON deliveries (event_id);
-- No index on (subscriber_id, status): deliveries_line serves a subscriber's pending ones, and
-- with stale statistics the planner preferred it for claim_due's per-task check, scanning
-- every pending delivery of the subscriber for each candidate.

-- Append-only log of HTTP attempts.
CREATE TABLE attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      text NOT NULL,
    attempted_at     double precision NOT NULL,
    trigger          text NOT NULL,           -- scheduled | replay
    status_code      integer,
    latency_ms       double precision NOT NULL,
    error            text,
    response_excerpt text
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);
