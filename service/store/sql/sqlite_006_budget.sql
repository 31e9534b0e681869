-- callback-relay schema (SQLite): each provider's request budget (RELAY_<PROVIDER>_API_RATE).
-- blocked_until: no request to the provider before this time (a 429 and its Retry-After).
CREATE TABLE provider_budget (
    provider TEXT PRIMARY KEY,
    blocked_until REAL NOT NULL DEFAULT 0
);
-- One row per request to a provider's API within the budget's window (a sliding log): ``at``
-- is when the request ended (at the claim: when its lease ends; the poll's record corrects it).
CREATE TABLE provider_requests (
    provider TEXT NOT NULL,
    watch_id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX provider_requests_at ON provider_requests (provider, at);
CREATE INDEX provider_requests_watch ON provider_requests (watch_id);
