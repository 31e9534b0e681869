-- callback-relay schema (SQLite): who a confirmed result is attributed to.
-- A callback URL is bound on first use to the task it named (task_id), unless it was minted
-- reusable. URLs minted before this version stay reusable (DEFAULT 1): they may be shared,
-- the relay passes reusable explicitly for every URL it mints from now on.
ALTER TABLE callback_urls ADD COLUMN reusable INTEGER NOT NULL DEFAULT 1;
ALTER TABLE callback_urls ADD COLUMN task_id TEXT;
-- Held callbacks of one task that came through other URLs than url_id (a JSON list of their
-- url ids): the watch waits for an operator to say whose the result is.
ALTER TABLE watches ADD COLUMN conflict_url_ids TEXT;
