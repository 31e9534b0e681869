-- callback-relay schema, version 3 (SQLite): ops console sessions, revocable at sign-out.
-- The cookie names a row; a page or form is served only while the row is live (not revoked,
-- not expired), so signing out ends the session on every process at once.
CREATE TABLE ops_sessions (
    id         TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL                    -- NULL while the session is live
) WITHOUT ROWID;
CREATE INDEX ops_sessions_expires ON ops_sessions (expires_at);
