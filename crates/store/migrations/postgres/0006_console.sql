-- alchemiscale-rs state store, PostgreSQL dialect. Keep in step with ../sqlite/0006_console.sql:
-- the two files differ only in type names.
-- The web console (crates/console): sessions live in the store, so every API instance
-- behind a proxy knows them and logging out ends a session everywhere. The session's
-- secret is kept only as its SHA-256 (a backup holds no usable session). The two indexes
-- serve the console's activity chart: claims and results per hour read a time range.
CREATE TABLE console_session (
    id_sha256 TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'compute', 'admin')),
    identifier TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX console_session_expires ON console_session (expires);
CREATE INDEX task_claim_log_claimed ON task_claim_log (claimed);
CREATE INDEX pdrr_created ON pdrr (datetime_created);
