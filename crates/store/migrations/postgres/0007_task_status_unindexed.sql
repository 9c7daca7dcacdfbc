-- alchemiscale-rs state store, PostgreSQL dialect. Keep in step with ../sqlite/0007_task_status_unindexed.sql:
-- the two files differ only in type names.
-- PostgreSQL: no index on task holds its status, so a status change (every claim, every
-- result) is a heap-only (HOT) update, which writes no index entry, whenever the row's
-- page has room, which the fill factor leaves. With the status in two indexes every
-- claim wrote five index entries at random places of indexes as large as the task table,
-- and at 1,000,000 tasks claims ran at 0.7 x their rate at 10,000. Status counts read the
-- rows instead of an index. SQLite updates only the indexes whose columns change and
-- keeps the status in them (its claims do not slow down as the store grows).
DROP INDEX task_scope;
CREATE INDEX task_scope ON task (org, campaign, project);
DROP INDEX task_transformation;
CREATE INDEX task_transformation ON task (transformation_id);
ALTER TABLE task SET (fillfactor = 80);
