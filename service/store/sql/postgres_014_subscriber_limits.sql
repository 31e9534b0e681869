-- callback-relay schema (PostgreSQL): respecting subscribers (service.subscriber_options).
-- headers: the subscriber's own request headers (an API gateway's key...), a JSON object of
-- name -> value as text, NULL = none; never shown in full. max_per_second: how many
-- deliveries a second it takes at most (service.pacing), NULL = no limit.
ALTER TABLE subscribers ADD COLUMN headers text;
ALTER TABLE subscribers ADD COLUMN max_per_second double precision
    CHECK (max_per_second > 0);
-- Failed attempts in a row per subscriber (relay_subscriber_consecutive_failures): written
-- when an attempt fails and when the first success after failures resets it. A table of its
-- own, so recording an attempt never locks the subscribers row (which subscriber changes lock
-- before deliveries: the other order would deadlock).
CREATE TABLE subscriber_health (
    subscriber_id        text PRIMARY KEY,
    consecutive_failures integer NOT NULL,
    updated_at           double precision NOT NULL
);
