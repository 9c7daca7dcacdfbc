-- alchemiscale-rs state store, SQLite dialect. Keep in step with ../postgres/0007_task_status_unindexed.sql:
-- the two files differ only in type names.
-- No index on task holds its status, so a status change (every claim, every result)
-- writes no index entry. With the status in two indexes every claim rewrote entries at
-- random places of indexes as large as the task table, and at 1,000,000 tasks claims ran
-- at 0.67-0.77 x their rate at 10,000 on both backends. On PostgreSQL the update is then
-- heap-only (HOT) whenever the row's page has room, which the fill factor leaves. Status
-- counts read the task rows instead of an index.
DROP INDEX task_scope;
CREATE INDEX task_scope ON task (org, campaign, project);
DROP INDEX task_transformation;
CREATE INDEX task_transformation ON task (transformation_id);
-- PostgreSQL only: ALTER TABLE task SET (fillfactor = 80);
