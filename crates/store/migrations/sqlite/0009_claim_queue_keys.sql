-- alchemiscale-rs state store, SQLite dialect. Keep in step with ../postgres/0009_claim_queue_keys.sql:
-- the two files differ only in type names and in the statements marked SQLite only.
-- Each ACTIONS row records the key of its claim-queue row (see src/claim_rank.rs): the
-- queue priority and claim rank it was last queued with. On SQLite the queue row of a
-- (hub, task) is found by that key instead of through an index on task_queue (task_id),
-- which every claim had to update at a random place: at 1,000,000 tasks about one page
-- written per claim, and copied again by the checkpoint. PostgreSQL, which leaves index
-- entries in place when it deletes a row, keeps that index. A key left behind when its
-- row leaves the queue matches nothing.
ALTER TABLE task_action ADD COLUMN queue_priority INTEGER;
ALTER TABLE task_action ADD COLUMN claim_rank REAL;
UPDATE task_action SET queue_priority = q.priority, claim_rank = q.claim_rank
    FROM task_queue q WHERE q.network_id = task_action.network_id AND q.task_id = task_action.task_id;
-- SQLite keeps the queue itself in claim order (a table clustered on its key), so that
-- claims, which take its rows in that order, delete them one after another in the same
-- pages rather than at the places where they were inserted. PostgreSQL keeps its heap
-- table and its two indexes.
ALTER TABLE task_queue RENAME TO task_queue_heap; -- SQLite only
CREATE TABLE task_queue ( -- SQLite only
    network_id INTEGER NOT NULL, -- SQLite only
    priority INTEGER NOT NULL, -- SQLite only
    claim_rank REAL NOT NULL, -- SQLite only
    task_id INTEGER NOT NULL, -- SQLite only
    PRIMARY KEY (network_id, priority, claim_rank, task_id) -- SQLite only
) WITHOUT ROWID; -- SQLite only
INSERT INTO task_queue (network_id, priority, claim_rank, task_id) -- SQLite only
    SELECT network_id, priority, claim_rank, task_id FROM task_queue_heap; -- SQLite only
DROP TABLE task_queue_heap; -- SQLite only
