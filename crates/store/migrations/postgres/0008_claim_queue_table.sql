-- alchemiscale-rs state store, PostgreSQL dialect. Keep in step with ../sqlite/0008_claim_queue_table.sql:
-- the two files differ only in type names.
-- The claim queue moves out of ACTIONS into a narrow table of its own (see
-- src/claim_rank.rs): one row per ACTIONS row whose task is waiting and whose weight is
-- above 0, with the task's priority and the row's claim rank. A claim deletes its task's
-- queue rows instead of rewriting the ACTIONS rows: on PostgreSQL that rewrite was a new
-- row version with an entry in every index of ACTIONS, at random places of indexes as large
-- as the table, and after each checkpoint a full page image of each page it touched. A
-- delete writes neither. A group's time (the largest rank claimed so far) is kept in
-- claim_clock, advanced by every row that leaves the queue because its task stopped waiting.
CREATE TABLE task_queue (
    network_id BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    claim_rank DOUBLE PRECISION NOT NULL,
    task_id BIGINT NOT NULL
);
INSERT INTO task_queue (network_id, priority, claim_rank, task_id)
    SELECT network_id, priority, claim_rank, task_id FROM task_action WHERE queued = 1 AND weight > 0
    ORDER BY network_id, priority, claim_rank;
CREATE INDEX task_queue_order ON task_queue (network_id, priority, claim_rank);
CREATE INDEX task_queue_task ON task_queue (task_id);
CREATE TABLE claim_clock (
    network_id BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    reached DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (network_id, priority)
);
INSERT INTO claim_clock (network_id, priority, reached)
    SELECT network_id, priority, MAX(claim_rank) FROM task_action WHERE queued = 0 AND weight > 0
    GROUP BY network_id, priority;
DROP INDEX task_action_queue;
DROP INDEX task_action_claimed;
ALTER TABLE task_action DROP COLUMN queued;
ALTER TABLE task_action DROP COLUMN claim_rank;
ALTER TABLE task_action DROP COLUMN priority;
