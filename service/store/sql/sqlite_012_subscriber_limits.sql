-- callback-relay schema (SQLite): respecting subscribers (service.subscriber_options).
-- headers: the subscriber's own request headers (an API gateway's key...), a JSON object of
-- name -> value, NULL = none; never shown in full. max_per_second: how many deliveries a second
-- it takes at most (service.pacing), NULL = no limit.
ALTER TABLE subscribers ADD COLUMN headers TEXT;
ALTER TABLE subscribers ADD COLUMN max_per_second REAL;
-- Failed attempts in a row per subscriber (relay_subscriber_consecutive_failures): written
-- when an attempt fails and when the first success after failures resets it. A table of its
-- own, so recording an attempt never writes the subscribers row.
CREATE TABLE subscriber_health (
    subscriber_id        TEXT PRIMARY KEY,
    consecutive_failures INTEGER NOT NULL,
    updated_at           REAL NOT NULL
) WITHOUT ROWID;
