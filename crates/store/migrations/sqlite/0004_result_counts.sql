-- alchemiscale-rs state store, SQLite dialect. Keep in step with ../postgres/0004_result_counts.sql:
-- the two files differ only in type names.
-- Successful results per transformation (distinct ProtocolDAGResultRefs over all its
-- tasks), kept up to date by result recording in the same transaction, so the strategist
-- reads a network's result counts from one row per transformation instead of every task
-- and result (see src/strategist.rs).
ALTER TABLE transformation ADD COLUMN ok_results INTEGER NOT NULL DEFAULT 0;
UPDATE transformation SET ok_results = (
    SELECT COUNT(DISTINCT tr.pdrr_id) FROM task t JOIN task_result tr ON tr.task_id = t.id JOIN pdrr p ON p.id = tr.pdrr_id
    WHERE t.transformation_id = transformation.id AND p.ok = 1
);
