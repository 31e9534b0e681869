-- callback-relay schema, version 2 (SQLite): watches, tasks the relay polls for their state.
-- state: active | completed | expired | rejected | canceled. An active watch with
-- lease_until in the future is being polled. origin: api (registered by a client) or
-- callback (a terminal callback held until the provider's API confirms it).
CREATE TABLE watches (
    seq            INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    provider       TEXT NOT NULL,
    task_id        TEXT NOT NULL,
    origin         TEXT NOT NULL,
    state          TEXT NOT NULL,
    metadata       TEXT NOT NULL,       -- JSON object attached to the events it emits
    url_id         TEXT,                -- the callback URL whose metadata events also carry
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    deadline_at    REAL NOT NULL,
    next_poll_at   REAL NOT NULL,
    lease_until    REAL,
    polls          INTEGER NOT NULL DEFAULT 0,
    backoff_step   INTEGER NOT NULL DEFAULT 0,  -- polls since the back-off last restarted
    not_found      INTEGER NOT NULL DEFAULT 0,  -- consecutive "no such task" answers
    last_polled_at REAL,
    last_status    TEXT,
    last_error     TEXT,
    held_status    TEXT,                -- a held callback's status, until a poll judged it
    held_body      BLOB,                -- ... and its body, as received
    holds          INTEGER NOT NULL DEFAULT 0,  -- callbacks held so far
    event_id       TEXT                 -- the event that ended the watch
);
-- One active watch per task: registering twice, or holding a callback, finds the same one.
CREATE UNIQUE INDEX watches_active_task ON watches (provider, task_id) WHERE state = 'active';
CREATE INDEX watches_due ON watches (next_poll_at) WHERE state = 'active';
CREATE INDEX watches_task ON watches (provider, task_id);
CREATE INDEX watches_finished ON watches (updated_at) WHERE state <> 'active';
