-- alchemiscale-rs state store, PostgreSQL dialect. Keep in step with ../sqlite/0010_console_layout.sql:
-- the two files differ only in type names.
-- The web console's network drawings: the node positions of a network's force-directed
-- layout, computed once (a network's structure never changes) and kept, so that every API
-- instance and every restart reuses them. Derived data: not part of dumps, made again
-- after a load.
CREATE TABLE console_layout (
    network_id BIGINT PRIMARY KEY REFERENCES network (id),
    positions TEXT NOT NULL
);
