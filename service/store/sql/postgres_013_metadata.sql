-- callback-relay schema (PostgreSQL): finding events by their metadata, routing by it.
-- event_metadata indexes each stored event's top-level scalar metadata entries as text
-- (service.store.metadata_index says which); written with the event by relay_ingest, deleted
-- with it. Its primary key is the index: a filter walks one (key, value) range, newest event
-- first.
CREATE TABLE event_metadata (
    key       text NOT NULL,
    value     text NOT NULL,
    event_seq bigint NOT NULL,
    PRIMARY KEY (key, value, event_seq)
);
-- Retention deletes an event's entries by its seq.
CREATE INDEX event_metadata_event ON event_metadata (event_seq);

-- A subscriber's metadata filter: a JSON object of key -> text value; NULL: every event.
ALTER TABLE subscribers ADD COLUMN metadata text;

-- relay_ingest as in postgres_010_archive, with p_meta_keys / p_meta_values: the event's
-- indexed metadata, written once the event is stored (emitted or superseded; a duplicate
-- writes nothing). Empty arrays (most events) cost one branch.
DROP FUNCTION relay_ingest(integer, integer, text, text, text, text, integer, text,
    double precision, text, text, bytea, boolean, text, text[], text[], double precision);

CREATE FUNCTION relay_ingest(
    p_lock_subscribers integer,
    p_lock_tasks integer,
    p_id text,
    p_provider text,
    p_task_id text,
    p_status text,
    p_progress integer,
    p_dedup_key text,
    p_received_at double precision,
    p_url_id text,
    p_body text,
    p_raw_body bytea,
    p_terminal boolean,
    p_subscribers_version text,
    p_delivery_ids text[],
    p_subscriber_ids text[],
    p_archive_deadline double precision,
    p_meta_keys text[],
    p_meta_values text[]
) RETURNS TABLE (outcome text, event_id text, deliveries integer)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_state text;
    v_seq bigint;
    v_existing text;
    v_task_key text := p_provider || '/' || p_task_id;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(p_lock_subscribers, 0),
            pg_advisory_xact_lock(p_lock_tasks, hashtext(v_task_key));
    IF coalesce((SELECT value FROM relay_meta WHERE key = 'subscribers_version'), '0')
            <> p_subscribers_version THEN
        RETURN QUERY SELECT 'stale'::text, NULL::text, 0;
        RETURN;
    END IF;
    INSERT INTO events (id, provider, task_id, status, progress, dedup_key, state,
                        received_at, url_id, body, raw_body)
    VALUES (p_id, p_provider, p_task_id, p_status, p_progress, p_dedup_key,
            CASE WHEN EXISTS (SELECT 1 FROM tasks t
                              WHERE t.provider = p_provider AND t.task_id = p_task_id)
                 THEN 'superseded' ELSE 'emitted' END,
            p_received_at, p_url_id, p_body, p_raw_body)
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING state, seq INTO v_state, v_seq;
    IF v_state IS NULL THEN
        SELECT e.id INTO v_existing FROM events e WHERE e.dedup_key = p_dedup_key;
        IF v_existing IS NULL THEN
            RAISE EXCEPTION 'a concurrent update interfered' USING ERRCODE = '40001';
        END IF;
        RETURN QUERY SELECT 'duplicate'::text, v_existing, 0;
        RETURN;
    END IF;
    IF cardinality(p_meta_keys) > 0 THEN
        INSERT INTO event_metadata (key, value, event_seq)
        SELECT m.key, m.value, v_seq FROM unnest(p_meta_keys, p_meta_values) AS m(key, value);
    END IF;
    IF v_state = 'superseded' THEN
        RETURN QUERY SELECT 'superseded'::text, p_id, 0;
        RETURN;
    END IF;
    IF p_terminal THEN
        INSERT INTO tasks (provider, task_id, terminal_status, event_id)
        VALUES (p_provider, p_task_id, p_status, p_id)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            UPDATE events SET state = 'superseded' WHERE id = p_id;
            RETURN QUERY SELECT 'superseded'::text, p_id, 0;
            RETURN;
        END IF;
    END IF;
    IF p_archive_deadline IS NOT NULL THEN
        INSERT INTO archive_jobs (event_id, provider, task_id, status, next_attempt_at,
                                  deadline_at, created_at, updated_at)
        VALUES (p_id, p_provider, p_task_id, 'pending', p_received_at, p_archive_deadline,
                p_received_at, p_received_at);
    END IF;
    INSERT INTO deliveries (id, event_id, subscriber_id, task_key, status, next_attempt_at,
                            created_at, updated_at)
    SELECT u.id, p_id, u.subscriber_id, v_task_key, 'pending',
           CASE WHEN p_archive_deadline IS NULL THEN p_received_at END,
           p_received_at, p_received_at
    FROM unnest(p_delivery_ids, p_subscriber_ids) WITH ORDINALITY AS u(id, subscriber_id, n)
    ORDER BY u.n;
    RETURN QUERY SELECT 'accepted'::text, p_id, coalesce(cardinality(p_delivery_ids), 0);
END;
$$;
