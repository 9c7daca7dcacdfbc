-- alchemiscale-rs state store, PostgreSQL dialect. Keep in step with ../sqlite/0005_claim_queue_waiting.sql:
-- the two files differ only in type names.
-- Only waiting tasks in the claim queue (see src/claim_rank.rs): `queued` is 1 while the
-- row's task is waiting and 0 otherwise, kept by every status change in its transaction.
-- Claims read the partial index of queued rows, so the rows of running and errored tasks
-- (which stay actioned) are never stepped over however many there are; the clocks of a
-- group are read from the ends of the two partial indexes.
ALTER TABLE task_action ADD COLUMN queued BIGINT NOT NULL DEFAULT 1;
UPDATE task_action SET queued = 0 WHERE task_id IN (SELECT id FROM task WHERE status <> 'waiting');
DROP INDEX task_action_claim;
CREATE INDEX task_action_queue ON task_action (network_id, priority, claim_rank) WHERE queued = 1;
CREATE INDEX task_action_claimed ON task_action (network_id, priority, claim_rank) WHERE queued = 0;
