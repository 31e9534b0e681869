-- callback-relay schema (PostgreSQL): who a confirmed result is attributed to.
-- The same columns as sqlite_004_attribution.sql. A callback URL is bound on first use to the
-- task it named (task_id), unless it was minted reusable. URLs minted before this version stay
-- reusable (DEFAULT true), and the relay passes reusable explicitly for every URL it mints.
ALTER TABLE callback_urls ADD COLUMN reusable boolean NOT NULL DEFAULT true;
ALTER TABLE callback_urls ADD COLUMN task_id text;
-- Held callbacks of one task that came through other URLs than url_id (a JSON list of their
-- url ids): the watch waits for an operator to say whose the result is.
ALTER TABLE watches ADD COLUMN conflict_url_ids text;
