-- callback-relay schema, version 4 (PostgreSQL): ops console sessions, revocable at sign-out.
-- The cookie names a row; a page or form is served only while the row is live (not revoked,
-- not expired), so signing out on one replica ends the session on all of them.
CREATE TABLE ops_sessions (
    id         text PRIMARY KEY,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    revoked_at double precision               -- NULL while the session is live
);
CREATE INDEX ops_sessions_expires ON ops_sessions (expires_at);
