-- alchemiscale-rs state store, SQLite dialect. Keep in step with ../postgres/0003_leases.sql:
-- the two files differ only in type names.
-- Leases (see src/lease.rs): background work that must have one holder at a time across
-- processes (a strategy's execution, ...) takes a named lease that runs out by itself, so
-- a killed holder blocks the work only until `expires` (integer microseconds, UTC).
CREATE TABLE lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires INTEGER NOT NULL
);
