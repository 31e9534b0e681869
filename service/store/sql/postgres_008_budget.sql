-- callback-relay schema (PostgreSQL): the same tables as sqlite_006_budget.sql.
-- blocked_until: no request to the provider before this time (a 429 and its Retry-After).
-- A claim locks its provider's row (FOR UPDATE): replicas take turns with the budget.
CREATE TABLE provider_budget (
    provider text PRIMARY KEY,
    blocked_until double precision NOT NULL DEFAULT 0
);
-- One row per request to a provider's API within the budget's window (a sliding log): ``at``
-- is when the request ended (at the claim: when its lease ends; the poll's record corrects it).
CREATE TABLE provider_requests (
    provider text NOT NULL,
    watch_id text NOT NULL,
    at double precision NOT NULL
);
CREATE INDEX provider_requests_at ON provider_requests (provider, at);
CREATE INDEX provider_requests_watch ON provider_requests (watch_id);
