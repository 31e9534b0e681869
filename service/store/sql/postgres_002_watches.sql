-- callback-relay schema, version 2 (PostgreSQL): watches, tasks the relay polls for their state.
-- The same table as sqlite_002_watches.sql. state: active | completed | expired | rejected |
-- canceled. An active watch with lease_until in the future is being polled (claimed with
-- FOR UPDATE SKIP LOCKED, so replicas never poll the same watch at once).
CREATE TABLE watches (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text NOT NULL UNIQUE,
    provider       text NOT NULL,
    task_id        text NOT NULL,
    origin         text NOT NULL CHECK (origin IN ('api', 'callback')),
    state          text NOT NULL
                   CHECK (state IN ('active', 'completed', 'expired', 'rejected', 'canceled')),
    metadata       text NOT NULL,             -- JSON object attached to the events it emits
    url_id         text,                      -- the callback URL whose metadata events carry
    created_at     double precision NOT NULL,
    updated_at     double precision NOT NULL,
    deadline_at    double precision NOT NULL,
    next_poll_at   double precision NOT NULL,
    lease_until    double precision,
    polls          integer NOT NULL DEFAULT 0,
    backoff_step   integer NOT NULL DEFAULT 0,  -- polls since the back-off last restarted
    not_found      integer NOT NULL DEFAULT 0,  -- consecutive "no such task" answers
    last_polled_at double precision,
    last_status    text,
    last_error     text,
    held_status    text,                      -- a held callback's status, until judged
    held_body      bytea,                     -- ... and its body, as received
    holds          integer NOT NULL DEFAULT 0,  -- callbacks held so far
    event_id       text                       -- the event that ended the watch
);
-- One active watch per task: registering twice, or holding a callback, finds the same one.
CREATE UNIQUE INDEX watches_active_task ON watches (provider, task_id) WHERE state = 'active';
CREATE INDEX watches_due ON watches (next_poll_at) WHERE state = 'active';
CREATE INDEX watches_task ON watches (provider, task_id);
CREATE INDEX watches_finished ON watches (updated_at) WHERE state <> 'active';
