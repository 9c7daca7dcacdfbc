-- alchemiscale-rs state store, PostgreSQL dialect. Keep in step with ../sqlite/0002_claim_queue.sql:
-- the two files differ only in type names.
-- The claim queue (model.md §6.3; see src/claim_rank.rs): every ACTIONS row carries its
-- task's priority and a claim rank, and a claim reads a hub's rows in (priority, rank)
-- order from one index. Rows actioned before this migration start with rank 0: they are
-- claimed in index order until an action, weight, priority or status change redraws them.
ALTER TABLE task_action ADD COLUMN priority BIGINT NOT NULL DEFAULT 10;
ALTER TABLE task_action ADD COLUMN claim_rank DOUBLE PRECISION NOT NULL DEFAULT 0;
UPDATE task_action SET priority = (SELECT t.priority FROM task t WHERE t.id = task_action.task_id);
CREATE INDEX task_action_claim ON task_action (network_id, priority, claim_rank);
