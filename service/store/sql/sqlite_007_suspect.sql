-- callback-relay schema (SQLite): what an operator needs to judge a suspect callback.
-- last_answer: the start of the provider API's last status answer (at most 4 KiB), as received.
-- unknown_status: the status word the last answer gave that the relay does not know (the watch
-- then polls at its slowest interval and is flagged); NULL once a known word is answered.
-- decision: released (forwarded as received) or dismissed, by decided_by at decided_at.
ALTER TABLE watches ADD COLUMN last_answer TEXT;
ALTER TABLE watches ADD COLUMN unknown_status TEXT;
ALTER TABLE watches ADD COLUMN decision TEXT;
ALTER TABLE watches ADD COLUMN decided_at REAL;
ALTER TABLE watches ADD COLUMN decided_by TEXT;
-- GET /v1/watches?held=true: callbacks awaiting confirmation.
CREATE INDEX watches_held ON watches (seq) WHERE held_status IS NOT NULL AND state = 'active';
