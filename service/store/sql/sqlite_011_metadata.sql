-- callback-relay schema (SQLite): finding events by their metadata, routing by it.
-- event_metadata indexes each stored event's top-level scalar metadata entries as text
-- (service.store.metadata_index says which); written with the event, deleted with it. Its
-- primary key is the index: a filter walks one (key, value) range, newest event first.
CREATE TABLE event_metadata (
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    PRIMARY KEY (key, value, event_seq)
) WITHOUT ROWID;
-- Retention deletes an event's entries by its seq.
CREATE INDEX event_metadata_event ON event_metadata (event_seq);

-- A subscriber's metadata filter: a JSON object of key -> text value; NULL: every event.
ALTER TABLE subscribers ADD COLUMN metadata TEXT
