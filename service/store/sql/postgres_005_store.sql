-- callback-relay schema (PostgreSQL): deliveries may be 'canceled' (their subscriber was deleted).
--
-- The status check only widens. NOT VALID: every existing row met the narrower check already,
-- so there is nothing to validate, and the table is not scanned under the lock.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')) NOT VALID;
