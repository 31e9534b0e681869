-- callback-relay schema (PostgreSQL): the same columns and indexes as sqlite_005_flood.sql.
-- suspect: why a held callback was not confirmed (contradicted, task_not_found,
-- invalid_task_id, deadline_unconfirmed); suspect_status: the status that callback claimed.
-- A watch that ends suspect keeps held_status and held_body: what was claimed, for the operator.
ALTER TABLE watches ADD COLUMN suspect text;
ALTER TABLE watches ADD COLUMN suspect_status text;
-- Active holds (watches created by a held callback), counted per callback URL and in total
-- before a new one is accepted (RELAY_HOLDS_PER_URL, RELAY_HOLDS_MAX).
CREATE INDEX watches_holds ON watches (url_id) WHERE state = 'active' AND origin = 'callback';
-- The watch worker claims each provider's due watches up to its share of the poll slots.
CREATE INDEX watches_provider_due ON watches (provider, next_poll_at) WHERE state = 'active';
-- GET /v1/watches?suspect=true
CREATE INDEX watches_suspect ON watches (seq) WHERE suspect IS NOT NULL;
