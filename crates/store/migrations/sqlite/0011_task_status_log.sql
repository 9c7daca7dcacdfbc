-- alchemiscale-rs state store, SQLite dialect. Keep in step with ../postgres/0011_task_status_log.sql:
-- the two files differ only in type names.
-- Status changes that neither a claim nor a result records: a user setting a status (and
-- its cascade to extending tasks), a network's restart patterns putting an errored task
-- back to waiting, a service releasing its claim, and the expiry of a silent service's
-- registration. With the claim log and the results they make a task's whole status
-- history (the web console's task page). Part of dumps (schema version 4).
CREATE TABLE task_status_log (
    task_id INTEGER NOT NULL REFERENCES task (id),
    changed INTEGER NOT NULL,
    previous TEXT NOT NULL,
    status TEXT NOT NULL,
    cause TEXT NOT NULL,
    PRIMARY KEY (task_id, changed, status)
);
