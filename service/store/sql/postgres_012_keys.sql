-- callback-relay schema (PostgreSQL): scoped API keys (service.api_keys).
-- A key is shown once, when created; only its SHA-256 is kept (key_hash), and a request's key
-- is found by its hash. scope: read | mint | operate | admin. last_used_at is written at most
-- once a minute per key. A revoked key (revoked_at set) opens nothing; its row stays, listed.
CREATE TABLE api_keys (
    seq          bigserial PRIMARY KEY,
    id           text NOT NULL UNIQUE,
    name         text,
    scope        text NOT NULL CHECK (scope IN ('read', 'mint', 'operate', 'admin')),
    key_hash     text NOT NULL UNIQUE,
    created_at   double precision NOT NULL,
    last_used_at double precision,
    revoked_at   double precision
);
-- A console session remembers the scope it was signed in with and the key, if any (NULL: the
-- admin token), so that revoking the key ends its sessions. Sessions from before: the token.
ALTER TABLE ops_sessions ADD COLUMN scope text NOT NULL DEFAULT 'admin';
ALTER TABLE ops_sessions ADD COLUMN key_id text;
CREATE INDEX ops_sessions_key ON ops_sessions (key_id) WHERE key_id IS NOT NULL;
