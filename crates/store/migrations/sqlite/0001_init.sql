-- alchemiscale-rs state store, SQLite dialect. Keep in step with ../postgres/0001_init.sql:
-- the two files differ only in id columns and type names.
-- Timestamps are integer microseconds since the Unix epoch (UTC) unless noted.

-- Every stored gufe object (networks, transformations, chemical systems, components,
-- protocols, mappings, strategies ...), keyed by its ScopedKey.
CREATE TABLE gufe_object (
    id INTEGER PRIMARY KEY,
    gufe_key TEXT NOT NULL,
    org TEXT NOT NULL,
    campaign TEXT NOT NULL,
    project TEXT NOT NULL,
    qualname TEXT NOT NULL,
    module TEXT NOT NULL,
    name TEXT,
    body TEXT NOT NULL -- the keyed dict, as CPython json.dumps writes it
);
CREATE UNIQUE INDEX gufe_object_scoped_key ON gufe_object (gufe_key, org, campaign, project);
CREATE INDEX gufe_object_class_scope ON gufe_object (qualname, org, campaign, project, gufe_key);
CREATE INDEX gufe_object_name ON gufe_object (name);

-- DEPENDS_ON: object -> object it references (for rebuilding keyed chains).
CREATE TABLE gufe_ref (
    parent_id INTEGER NOT NULL REFERENCES gufe_object (id),
    child_id INTEGER NOT NULL REFERENCES gufe_object (id),
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX gufe_ref_child ON gufe_ref (child_id);

-- AlchemicalNetwork + its NetworkMark (state) + its TaskHub (weight).
CREATE TABLE network (
    id INTEGER PRIMARY KEY REFERENCES gufe_object (id),
    taskhub_token TEXT NOT NULL, -- md5 of the network ScopedKey: TaskHub-<t>, NetworkMark-<t>
    state TEXT NOT NULL CHECK (state IN ('active', 'inactive', 'invalid', 'deleted')),
    weight REAL NOT NULL DEFAULT 0.5 CHECK (weight >= 0 AND weight <= 1)
);
CREATE UNIQUE INDEX network_taskhub ON network (taskhub_token);

-- The network's keyed chain in submission order (served back byte for byte).
CREATE TABLE network_member (
    network_id INTEGER NOT NULL REFERENCES network (id),
    position INTEGER NOT NULL,
    object_id INTEGER NOT NULL REFERENCES gufe_object (id),
    PRIMARY KEY (network_id, position)
);

CREATE TABLE transformation (
    id INTEGER PRIMARY KEY REFERENCES gufe_object (id),
    protocol TEXT -- class name of its protocol
);
CREATE INDEX transformation_protocol ON transformation (protocol);

-- transformation -> end-state chemical systems (stateA/stateB or system)
CREATE TABLE transformation_system (
    transformation_id INTEGER NOT NULL REFERENCES transformation (id),
    attribute TEXT NOT NULL,
    system_id INTEGER NOT NULL REFERENCES gufe_object (id),
    PRIMARY KEY (transformation_id, attribute)
);
CREATE INDEX transformation_system_system ON transformation_system (system_id);

CREATE TABLE network_transformation (
    network_id INTEGER NOT NULL REFERENCES network (id),
    transformation_id INTEGER NOT NULL REFERENCES transformation (id),
    PRIMARY KEY (network_id, transformation_id)
);
CREATE INDEX network_transformation_tf ON network_transformation (transformation_id);

CREATE TABLE network_system (
    network_id INTEGER NOT NULL REFERENCES network (id),
    system_id INTEGER NOT NULL REFERENCES gufe_object (id),
    PRIMARY KEY (network_id, system_id)
);
CREATE INDEX network_system_system ON network_system (system_id);

CREATE TABLE task (
    id INTEGER PRIMARY KEY,
    gufe_key TEXT NOT NULL,
    org TEXT NOT NULL,
    campaign TEXT NOT NULL,
    project TEXT NOT NULL,
    transformation_id INTEGER NOT NULL REFERENCES transformation (id),
    status TEXT NOT NULL DEFAULT 'waiting'
        CHECK (status IN ('waiting', 'running', 'complete', 'error', 'invalid', 'deleted')),
    priority INTEGER NOT NULL DEFAULT 10 CHECK (priority >= 1),
    extends_id INTEGER REFERENCES task (id),
    creator TEXT,
    datetime_created INTEGER NOT NULL
);
CREATE UNIQUE INDEX task_scoped_key ON task (gufe_key, org, campaign, project);
CREATE INDEX task_scope ON task (org, campaign, project, status);
CREATE INDEX task_transformation ON task (transformation_id, status);
CREATE INDEX task_extends ON task (extends_id);

-- ACTIONS: TaskHub (= network id) -> Task with a weight.
CREATE TABLE task_action (
    network_id INTEGER NOT NULL REFERENCES network (id),
    task_id INTEGER NOT NULL REFERENCES task (id),
    weight REAL NOT NULL DEFAULT 0.5 CHECK (weight >= 0 AND weight <= 1),
    PRIMARY KEY (network_id, task_id)
);
CREATE INDEX task_action_task ON task_action (task_id);

CREATE TABLE compute_service (
    id INTEGER PRIMARY KEY,
    identifier TEXT NOT NULL,
    registered INTEGER NOT NULL,
    heartbeat INTEGER NOT NULL,
    manager_name TEXT
);
CREATE UNIQUE INDEX compute_service_identifier ON compute_service (identifier);
CREATE INDEX compute_service_manager ON compute_service (manager_name);

CREATE TABLE compute_service_failure (
    service_id INTEGER NOT NULL REFERENCES compute_service (id) ON DELETE CASCADE,
    failed_at INTEGER NOT NULL
);
CREATE INDEX compute_service_failure_service ON compute_service_failure (service_id, failed_at);

-- CLAIMS: at most one claim per task (primary key).
CREATE TABLE task_claim (
    task_id INTEGER PRIMARY KEY REFERENCES task (id),
    service_id INTEGER NOT NULL REFERENCES compute_service (id) ON DELETE CASCADE,
    claimed INTEGER NOT NULL
);
CREATE INDEX task_claim_service ON task_claim (service_id);

-- Every (task, compute service) claim ever made, kept when the claim itself goes away
-- (completion, expiry): a result is accepted only from a service that claimed the task.
CREATE TABLE task_claim_log (
    task_id INTEGER NOT NULL REFERENCES task (id),
    service_identifier TEXT NOT NULL,
    claimed INTEGER NOT NULL,
    PRIMARY KEY (task_id, service_identifier)
);

CREATE TABLE compute_manager (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    uuid TEXT NOT NULL,
    registered INTEGER NOT NULL,
    last_status_update INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('OK', 'ERROR')),
    detail TEXT,
    saturation REAL CHECK (saturation IS NULL OR (saturation >= 0 AND saturation <= 1))
);
CREATE UNIQUE INDEX compute_manager_name ON compute_manager (name);

-- ProtocolDAGResultRef: where a result lives in the object store.
CREATE TABLE pdrr (
    id INTEGER PRIMARY KEY,
    gufe_key TEXT NOT NULL,
    org TEXT NOT NULL,
    campaign TEXT NOT NULL,
    project TEXT NOT NULL,
    obj_key TEXT NOT NULL,
    location TEXT,
    ok INTEGER NOT NULL CHECK (ok IN (0, 1)),
    datetime_created TEXT, -- Python isoformat, exactly as hashed into the key
    creator TEXT,
    content_sha256 TEXT,
    size INTEGER
);
CREATE UNIQUE INDEX pdrr_scoped_key ON pdrr (gufe_key, org, campaign, project);

-- RESULTS_IN
CREATE TABLE task_result (
    task_id INTEGER NOT NULL REFERENCES task (id),
    pdrr_id INTEGER NOT NULL REFERENCES pdrr (id),
    PRIMARY KEY (task_id, pdrr_id)
);
CREATE INDEX task_result_pdrr ON task_result (pdrr_id);

CREATE TABLE tracebacks (
    id INTEGER PRIMARY KEY,
    gufe_key TEXT NOT NULL,
    org TEXT NOT NULL,
    campaign TEXT NOT NULL,
    project TEXT NOT NULL,
    body TEXT NOT NULL -- keyed dict of the Tracebacks object
);
CREATE UNIQUE INDEX tracebacks_scoped_key ON tracebacks (gufe_key, org, campaign, project);

-- DETAILS: Tracebacks -> PDRR (one Tracebacks record may detail several identical failures)
CREATE TABLE pdrr_tracebacks (
    pdrr_id INTEGER PRIMARY KEY REFERENCES pdrr (id),
    tracebacks_id INTEGER NOT NULL REFERENCES tracebacks (id)
);
CREATE INDEX pdrr_tracebacks_tracebacks ON pdrr_tracebacks (tracebacks_id);

-- TaskRestartPattern ENFORCES TaskHub (= network id)
CREATE TABLE restart_pattern (
    id INTEGER PRIMARY KEY,
    gufe_key TEXT NOT NULL,
    network_id INTEGER NOT NULL REFERENCES network (id),
    pattern TEXT NOT NULL CHECK (pattern <> ''),
    max_retries INTEGER NOT NULL CHECK (max_retries >= 1)
);
CREATE UNIQUE INDEX restart_pattern_hub_pattern ON restart_pattern (network_id, pattern);

-- APPLIES
CREATE TABLE restart_applies (
    pattern_id INTEGER NOT NULL REFERENCES restart_pattern (id) ON DELETE CASCADE,
    task_id INTEGER NOT NULL REFERENCES task (id),
    num_retries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pattern_id, task_id)
);
CREATE INDEX restart_applies_task ON restart_applies (task_id);

-- PROGRESSES: Strategy -> network, carrying the StrategyState.
CREATE TABLE network_strategy (
    network_id INTEGER PRIMARY KEY REFERENCES network (id),
    strategy_id INTEGER NOT NULL REFERENCES gufe_object (id),
    mode TEXT NOT NULL CHECK (mode IN ('full', 'partial', 'disabled')),
    status TEXT NOT NULL CHECK (status IN ('awake', 'dormant', 'error')),
    iterations INTEGER NOT NULL,
    sleep_interval INTEGER NOT NULL CHECK (sleep_interval >= 1),
    last_iteration INTEGER,
    last_iteration_result_count INTEGER NOT NULL,
    max_tasks_per_transformation INTEGER NOT NULL CHECK (max_tasks_per_transformation >= 1),
    task_scaling TEXT NOT NULL CHECK (task_scaling IN ('linear', 'exponential')),
    exception TEXT, -- JSON [type name, message]
    traceback TEXT
);
CREATE INDEX network_strategy_strategy ON network_strategy (strategy_id);

CREATE TABLE identity (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'compute', 'admin')),
    identifier TEXT NOT NULL,
    hashed_key TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    expires INTEGER,
    email TEXT,
    full_name TEXT
);
CREATE UNIQUE INDEX identity_kind_identifier ON identity (kind, identifier);

CREATE TABLE identity_scope (
    identity_id INTEGER NOT NULL REFERENCES identity (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    scope TEXT NOT NULL,
    PRIMARY KEY (identity_id, scope)
);
