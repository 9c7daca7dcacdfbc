//! Schema administration: `database init|check|reset` and the table
//! catalogue that `dump`/`load` and `check` rely on.

use sqlx::migrate::Migrator;
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::{Backend, Store};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Column types as stored (and as written in dumps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColType {
    I64,
    F64,
    Text,
}

#[derive(Debug)]
pub(crate) struct TableSpec {
    pub name: &'static str,
    /// (column, type, nullable)
    pub columns: &'static [(&'static str, ColType, bool)],
    /// Deterministic row order for dumps.
    pub order_by: &'static str,
    /// Has a generated `id` (PostgreSQL identity) to re-sync after a load.
    pub identity_id: bool,
}

use ColType::{Text as T, F64 as F, I64 as I};

/// Every table, in creation (= foreign-key dependency) order.
pub(crate) const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "gufe_object",
        columns: &[
            ("id", I, false),
            ("gufe_key", T, false),
            ("org", T, false),
            ("campaign", T, false),
            ("project", T, false),
            ("qualname", T, false),
            ("module", T, false),
            ("name", T, true),
            ("body", T, false),
        ],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "gufe_ref",
        columns: &[("parent_id", I, false), ("child_id", I, false)],
        order_by: "parent_id, child_id",
        identity_id: false,
    },
    TableSpec {
        name: "network",
        columns: &[("id", I, false), ("taskhub_token", T, false), ("state", T, false), ("weight", F, false)],
        order_by: "id",
        identity_id: false,
    },
    TableSpec {
        name: "network_member",
        columns: &[("network_id", I, false), ("position", I, false), ("object_id", I, false)],
        order_by: "network_id, position",
        identity_id: false,
    },
    TableSpec {
        name: "transformation",
        columns: &[("id", I, false), ("protocol", T, true), ("ok_results", I, false)],
        order_by: "id",
        identity_id: false,
    },
    TableSpec {
        name: "transformation_system",
        columns: &[("transformation_id", I, false), ("attribute", T, false), ("system_id", I, false)],
        order_by: "transformation_id, attribute",
        identity_id: false,
    },
    TableSpec {
        name: "network_transformation",
        columns: &[("network_id", I, false), ("transformation_id", I, false)],
        order_by: "network_id, transformation_id",
        identity_id: false,
    },
    TableSpec {
        name: "network_system",
        columns: &[("network_id", I, false), ("system_id", I, false)],
        order_by: "network_id, system_id",
        identity_id: false,
    },
    TableSpec {
        name: "task",
        columns: &[
            ("id", I, false),
            ("gufe_key", T, false),
            ("org", T, false),
            ("campaign", T, false),
            ("project", T, false),
            ("transformation_id", I, false),
            ("status", T, false),
            ("priority", I, false),
            ("extends_id", I, true),
            ("creator", T, true),
            ("datetime_created", I, false),
        ],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "task_action",
        columns: &[
            ("network_id", I, false),
            ("task_id", I, false),
            ("weight", F, false),
            ("queue_priority", I, true),
            ("claim_rank", F, true),
        ],
        order_by: "network_id, task_id",
        identity_id: false,
    },
    TableSpec {
        name: "compute_service",
        columns: &[
            ("id", I, false),
            ("identifier", T, false),
            ("registered", I, false),
            ("heartbeat", I, false),
            ("manager_name", T, true),
        ],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "compute_service_failure",
        columns: &[("service_id", I, false), ("failed_at", I, false)],
        order_by: "service_id, failed_at",
        identity_id: false,
    },
    TableSpec {
        name: "task_claim",
        columns: &[("task_id", I, false), ("service_id", I, false), ("claimed", I, false)],
        order_by: "task_id",
        identity_id: false,
    },
    TableSpec {
        name: "task_claim_log",
        columns: &[("task_id", I, false), ("service_identifier", T, false), ("claimed", I, false)],
        order_by: "task_id, service_identifier",
        identity_id: false,
    },
    TableSpec {
        name: "compute_manager",
        columns: &[
            ("id", I, false),
            ("name", T, false),
            ("uuid", T, false),
            ("registered", I, false),
            ("last_status_update", I, false),
            ("status", T, false),
            ("detail", T, true),
            ("saturation", F, true),
        ],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "pdrr",
        columns: &[
            ("id", I, false),
            ("gufe_key", T, false),
            ("org", T, false),
            ("campaign", T, false),
            ("project", T, false),
            ("obj_key", T, false),
            ("location", T, true),
            ("ok", I, false),
            ("datetime_created", T, true),
            ("creator", T, true),
            ("content_sha256", T, true),
            ("size", I, true),
        ],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "task_result",
        columns: &[("task_id", I, false), ("pdrr_id", I, false)],
        order_by: "task_id, pdrr_id",
        identity_id: false,
    },
    TableSpec {
        name: "tracebacks",
        columns: &[
            ("id", I, false),
            ("gufe_key", T, false),
            ("org", T, false),
            ("campaign", T, false),
            ("project", T, false),
            ("body", T, false),
        ],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "pdrr_tracebacks",
        columns: &[("pdrr_id", I, false), ("tracebacks_id", I, false)],
        order_by: "pdrr_id",
        identity_id: false,
    },
    TableSpec {
        name: "restart_pattern",
        columns: &[("id", I, false), ("gufe_key", T, false), ("network_id", I, false), ("pattern", T, false), ("max_retries", I, false)],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "restart_applies",
        columns: &[("pattern_id", I, false), ("task_id", I, false), ("num_retries", I, false)],
        order_by: "pattern_id, task_id",
        identity_id: false,
    },
    TableSpec {
        name: "network_strategy",
        columns: &[
            ("network_id", I, false),
            ("strategy_id", I, false),
            ("mode", T, false),
            ("status", T, false),
            ("iterations", I, false),
            ("sleep_interval", I, false),
            ("last_iteration", I, true),
            ("last_iteration_result_count", I, false),
            ("max_tasks_per_transformation", I, false),
            ("task_scaling", T, false),
            ("exception", T, true),
            ("traceback", T, true),
        ],
        order_by: "network_id",
        identity_id: false,
    },
    TableSpec {
        name: "identity",
        columns: &[
            ("id", I, false),
            ("kind", T, false),
            ("identifier", T, false),
            ("hashed_key", T, false),
            ("disabled", I, false),
            ("expires", I, true),
            ("email", T, true),
            ("full_name", T, true),
        ],
        order_by: "id",
        identity_id: true,
    },
    TableSpec {
        name: "identity_scope",
        columns: &[("identity_id", I, false), ("position", I, false), ("scope", T, false)],
        order_by: "identity_id, position",
        identity_id: false,
    },
    TableSpec {
        name: "lease",
        columns: &[("name", T, false), ("holder", T, false), ("expires", I, false)],
        order_by: "name",
        identity_id: false,
    },
    TableSpec {
        name: "console_session",
        columns: &[
            ("id_sha256", T, false),
            ("kind", T, false),
            ("identifier", T, false),
            ("csrf", T, false),
            ("created", I, false),
            ("expires", I, false),
        ],
        order_by: "id_sha256",
        identity_id: false,
    },
    TableSpec {
        name: "task_queue",
        columns: &[("network_id", I, false), ("priority", I, false), ("claim_rank", F, false), ("task_id", I, false)],
        order_by: "network_id, task_id",
        identity_id: false,
    },
    TableSpec {
        name: "claim_clock",
        columns: &[("network_id", I, false), ("priority", I, false), ("reached", F, false)],
        order_by: "network_id, priority",
        identity_id: false,
    },
    TableSpec {
        name: "task_status_log",
        columns: &[("task_id", I, false), ("changed", I, false), ("previous", T, false), ("status", T, false), ("cause", T, false)],
        order_by: "task_id, changed, status",
        identity_id: false,
    },
];

/// Tables of data derived from the rest (the console's network layouts): not dumped (they
/// are made again after a load), emptied and dropped before the tables they refer to.
pub(crate) const DERIVED_TABLES: &[&str] = &["console_layout"];

/// Unique indexes the uniqueness rules rest on (checked by `check`).
const UNIQUE_INDEXES: &[&str] = &[
    "gufe_object_scoped_key",
    "network_taskhub",
    "task_scoped_key",
    "compute_service_identifier",
    "compute_manager_name",
    "pdrr_scoped_key",
    "tracebacks_scoped_key",
    "restart_pattern_hub_pattern",
    "identity_kind_identifier",
];

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// Every migration of this binary applied; every table and unique index present.
    Current { version: i64 },
    /// No schema at all (fresh or reset store): run `database init`.
    Uninitialized,
    /// Migrations this binary knows are not applied yet: run `database init`.
    Outdated { applied: i64, latest: i64 },
    /// The store was migrated by a newer binary.
    Newer { applied: i64, latest: i64 },
    /// Something is missing or altered.
    Damaged(String),
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        matches!(self, SchemaStatus::Current { .. })
    }
}

impl std::fmt::Display for SchemaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaStatus::Current { version } => write!(f, "schema is current (version {version})"),
            SchemaStatus::Uninitialized => write!(f, "the store has no schema; run `alchemiscale database init`"),
            SchemaStatus::Outdated { applied, latest } => {
                write!(f, "schema version {applied} is older than this binary's {latest}; run `alchemiscale database init` to migrate")
            }
            SchemaStatus::Newer { applied, latest } => {
                write!(f, "schema version {applied} is newer than this binary's {latest}; upgrade alchemiscale")
            }
            SchemaStatus::Damaged(why) => write!(f, "schema is damaged: {why}"),
        }
    }
}

impl Store {
    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Create or upgrade the schema (idempotent). Refuses a store migrated by a newer binary.
    pub async fn init(&self) -> Result<()> {
        if let SchemaStatus::Newer { .. } = self.schema_status().await? {
            return Err(StoreError::Schema(self.schema_status().await?.to_string()));
        }
        self.migrator().run(&self.write).await?;
        Ok(())
    }

    async fn table_names(&self) -> Result<Vec<String>> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table'",
            Backend::Postgres => "SELECT CAST(tablename AS TEXT) FROM pg_tables WHERE schemaname = current_schema()",
        };
        let rows = sqlx::query(sql).fetch_all(&self.read).await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    async fn index_names(&self) -> Result<Vec<String>> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'index'",
            Backend::Postgres => "SELECT CAST(indexname AS TEXT) FROM pg_indexes WHERE schemaname = current_schema()",
        };
        let rows = sqlx::query(sql).fetch_all(&self.read).await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    /// Inspect the schema without changing anything.
    pub async fn schema_status(&self) -> Result<SchemaStatus> {
        let tables = self.table_names().await?;
        let latest = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        if !tables.iter().any(|t| t == "_sqlx_migrations") {
            let ours = TABLES.iter().filter(|t| tables.iter().any(|x| x == t.name)).count();
            return Ok(if ours == 0 {
                SchemaStatus::Uninitialized
            } else {
                SchemaStatus::Damaged("tables exist but no migration record".into())
            });
        }
        let rows = sqlx::query(
            "SELECT version, checksum, CAST(CASE WHEN success THEN 1 ELSE 0 END AS BIGINT) FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.read)
        .await?;
        let mut applied = 0;
        for r in &rows {
            let version: i64 = r.try_get(0)?;
            let checksum: Vec<u8> = r.try_get(1)?;
            let success = r.try_get::<i64, _>(2)? == 1;
            if !success {
                return Ok(SchemaStatus::Damaged(format!("migration {version} did not complete")));
            }
            match self.migrator().iter().find(|m| m.version == version) {
                None => return Ok(SchemaStatus::Newer { applied: version, latest }),
                Some(m) if m.checksum.as_ref() != checksum.as_slice() => {
                    return Ok(SchemaStatus::Damaged(format!("migration {version} was altered after it was applied")))
                }
                Some(_) => applied = applied.max(version),
            }
        }
        if applied < latest {
            return Ok(SchemaStatus::Outdated { applied, latest });
        }
        if let Some(t) = TABLES.iter().find(|t| !tables.iter().any(|x| x == t.name)) {
            return Ok(SchemaStatus::Damaged(format!("table {} is missing", t.name)));
        }
        let indexes = self.index_names().await?;
        if let Some(i) = UNIQUE_INDEXES.iter().find(|i| !indexes.iter().any(|x| x == *i)) {
            return Ok(SchemaStatus::Damaged(format!("unique index {i} is missing")));
        }
        Ok(SchemaStatus::Current { version: applied })
    }

    /// Data that breaks a rule the schema cannot express, one message each (`database
    /// check`): transformations whose kept count of successful results differs from their
    /// results, ACTIONS rows on a hub whose network does not hold the task's transformation
    /// (claims rely on that rule: see `claim_select::QueueRowRead`), and claim-queue rows
    /// that disagree with their task's status or ACTIONS row.
    pub async fn inconsistencies(&self) -> Result<Vec<String>> {
        let mut out = self.count_inconsistencies().await?;
        let rows = sqlx::query(
            "SELECT t.gufe_key, t.org, t.campaign, t.project FROM task_action a JOIN task t ON t.id = a.task_id \
             WHERE NOT EXISTS (SELECT 1 FROM network_transformation nt WHERE nt.network_id = a.network_id \
             AND nt.transformation_id = t.transformation_id) ORDER BY t.id LIMIT 100",
        )
        .fetch_all(&self.read)
        .await?;
        for r in &rows {
            let task = task_text(r)?;
            out.push(format!("task {task} is actioned on a hub whose network does not hold its transformation"));
        }
        // (1) queue rows of tasks that are not waiting, (2) queue rows without an ACTIONS
        // row of weight above 0, (0) such ACTIONS rows of waiting tasks with no queue row
        // at the key they record (see `claim_rank::queue_rows_of`)
        let rows = sqlx::query(
            "SELECT t.gufe_key, t.org, t.campaign, t.project, t.status, \
             CASE WHEN t.status <> 'waiting' THEN 1 ELSE 2 END, t.id FROM task_queue q JOIN task t ON t.id = q.task_id \
             LEFT JOIN task_action a ON a.network_id = q.network_id AND a.task_id = q.task_id \
             WHERE t.status <> 'waiting' OR a.task_id IS NULL OR a.weight <= 0 \
             UNION ALL \
             SELECT t.gufe_key, t.org, t.campaign, t.project, t.status, 0, t.id FROM task_action a JOIN task t ON t.id = a.task_id \
             WHERE t.status = 'waiting' AND a.weight > 0 \
             AND NOT EXISTS (SELECT 1 FROM task_queue q WHERE q.network_id = a.network_id AND q.priority = a.queue_priority \
             AND q.claim_rank = a.claim_rank AND q.task_id = a.task_id) \
             ORDER BY 7 LIMIT 100",
        )
        .fetch_all(&self.read)
        .await?;
        for r in &rows {
            let task = task_text(r)?;
            let status: String = r.try_get(4)?;
            out.push(match r.try_get::<i64, _>(5)? {
                1 => format!("task {task} is {status} but in the claim queue"),
                2 => format!("task {task} is in the claim queue of a hub that does not action it with a weight above 0"),
                _ => format!("task {task} is waiting and actioned but missing from that hub's claim queue"),
            });
        }
        Ok(out)
    }

    async fn count_inconsistencies(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT o.gufe_key, x.ok_results, x.actual FROM (SELECT tf.id, tf.ok_results, \
             (SELECT COUNT(DISTINCT tr.pdrr_id) FROM task t JOIN task_result tr ON tr.task_id = t.id JOIN pdrr p ON p.id = tr.pdrr_id \
              WHERE t.transformation_id = tf.id AND p.ok = 1) AS actual FROM transformation tf) x \
             JOIN gufe_object o ON o.id = x.id WHERE x.ok_results <> x.actual ORDER BY o.gufe_key",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(format!(
                    "transformation {} counts {} successful results but has {}",
                    r.try_get::<String, _>(0)?,
                    r.try_get::<i64, _>(1)?,
                    r.try_get::<i64, _>(2)?
                ))
            })
            .collect()
    }

    /// Fail unless the schema is current (servers call this at start).
    pub async fn require_current_schema(&self) -> Result<()> {
        let status = self.schema_status().await?;
        if status.is_current() {
            Ok(())
        } else {
            Err(StoreError::Schema(status.to_string()))
        }
    }

    /// Delete every record and the schema itself (`database reset`). The object store
    /// is not touched.
    pub async fn reset(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let cascade = if self.backend == Backend::Postgres { " CASCADE" } else { "" };
        for t in DERIVED_TABLES {
            sqlx::query(&format!("DROP TABLE IF EXISTS {t}{cascade}")).execute(&mut *tx).await?;
        }
        for t in TABLES.iter().rev() {
            sqlx::query(&format!("DROP TABLE IF EXISTS {}{cascade}", t.name)).execute(&mut *tx).await?;
        }
        sqlx::query(&format!("DROP TABLE IF EXISTS _sqlx_migrations{cascade}")).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// True if no table holds a row.
    pub async fn is_empty(&self) -> Result<bool> {
        for t in TABLES {
            let row = sqlx::query(&format!("SELECT COUNT(*) FROM {}", t.name)).fetch_one(&self.read).await?;
            if row.try_get::<i64, _>(0)? > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Refresh the query planner's statistics (`ANALYZE`). PostgreSQL's autovacuum does
    /// this on its own once enough rows change; call it after a bulk load that the next
    /// queries should be planned for at once (benchmarks, restores).
    pub async fn refresh_statistics(&self) -> Result<()> {
        sqlx::query("ANALYZE").execute(&self.write).await?;
        Ok(())
    }

    /// Result references with an object location, in id order after `after_id`, at most
    /// `limit`: (id, result key, location, recorded size). `database check` pages through
    /// them to find references whose objects are missing.
    pub async fn result_objects(&self, after_id: i64, limit: i64) -> Result<Vec<(i64, String, String, Option<i64>)>> {
        let rows = sqlx::query("SELECT id, gufe_key, location, size FROM pdrr WHERE id > $1 AND location IS NOT NULL ORDER BY id LIMIT $2")
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
    }

    /// Row counts per table (for `database check` output and tests).
    pub async fn table_counts(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut out = Vec::new();
        for t in TABLES {
            let row = sqlx::query(&format!("SELECT COUNT(*) FROM {}", t.name)).fetch_one(&self.read).await?;
            out.push((t.name, row.try_get::<i64, _>(0)?));
        }
        Ok(out)
    }
}

/// A task's key as text from the first four columns of a row (gufe key, org, campaign,
/// project), for `database check`'s reports: built, not parsed, so a corrupt key is still
/// reported.
fn task_text(r: &sqlx::any::AnyRow) -> Result<String> {
    Ok(format!(
        "{}-{}-{}-{}",
        r.try_get::<String, _>(0)?,
        r.try_get::<String, _>(1)?,
        r.try_get::<String, _>(2)?,
        r.try_get::<String, _>(3)?
    ))
}

#[cfg(test)]
mod tests {
    /// The PostgreSQL migration is the SQLite one with its type names translated; keep
    /// them in step (this is the translation, applied to the SQLite text). A statement
    /// only PostgreSQL runs is a `-- PostgreSQL only: ` comment in the SQLite file; each
    /// line of a statement only SQLite runs ends with `-- SQLite only`.
    #[test]
    fn migrations_are_in_step() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        for entry in std::fs::read_dir(format!("{dir}/sqlite")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let lite = std::fs::read_to_string(format!("{dir}/sqlite/{name}")).unwrap();
            let pg = std::fs::read_to_string(format!("{dir}/postgres/{name}")).unwrap();
            let lite: String = lite.lines().filter(|l| !l.ends_with("-- SQLite only")).map(|l| format!("{l}\n")).collect();
            let translated = lite
                .replace("SQLite dialect. Keep in step with ../postgres/", "PostgreSQL dialect. Keep in step with ../sqlite/")
                .replace("id INTEGER PRIMARY KEY REFERENCES", "id BIGINT PRIMARY KEY REFERENCES")
                .replace("id INTEGER PRIMARY KEY,", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,")
                .replace("task_id INTEGER PRIMARY KEY", "task_id BIGINT PRIMARY KEY")
                .replace("network_id INTEGER PRIMARY KEY", "network_id BIGINT PRIMARY KEY")
                .replace(" INTEGER", " BIGINT")
                .replace(" REAL", " DOUBLE PRECISION")
                .replace("-- PostgreSQL only: ", "");
            assert_eq!(translated, pg, "migrations/{{sqlite,postgres}}/{name} differ beyond type names");
        }
    }

    /// `database check` reports a waiting, actioned task missing from the claim queue.
    #[tokio::test]
    async fn claim_queue_out_of_step_is_reported() {
        use alchemiscale_model::chain::KeyedChain;
        use alchemiscale_model::synthetic::network_chain_json;
        use alchemiscale_model::NetworkState;

        use crate::tasks::TaskRequest;
        use crate::{Store, StoreLocation, StoreOptions};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&StoreLocation::Sqlite { path: dir.path().join("state.db") }, &StoreOptions::default()).await.unwrap();
        store.init().await.unwrap();
        let chain = KeyedChain::from_value(alchemiscale_model::json::parse(&network_chain_json(2, 1, "queue")).unwrap()).unwrap();
        let scope: alchemiscale_model::Scope = "queue-check-test".parse().unwrap();
        let created = store.create_network(&chain, &scope, NetworkState::Active).await.unwrap();
        let tf = store.network_transformations(&created.network).await.unwrap().remove(0);
        let reqs: Vec<TaskRequest> = (0..2).map(|_| TaskRequest { transformation: tf.clone(), extends: None }).collect();
        let tasks = store.create_tasks(&reqs, None).await.unwrap();
        let listed: Vec<_> = tasks.iter().cloned().map(Some).collect();
        store.action_tasks(&created.network, &listed, None).await.unwrap();
        assert_eq!(store.inconsistencies().await.unwrap(), Vec::<String>::new());
        sqlx::query("DELETE FROM task_queue WHERE task_id = (SELECT id FROM task WHERE gufe_key = $1)")
            .bind(tasks[0].gufe_key().as_str())
            .execute(&store.write)
            .await
            .unwrap();
        assert_eq!(
            store.inconsistencies().await.unwrap(),
            vec![format!("task {} is waiting and actioned but missing from that hub's claim queue", tasks[0])]
        );
        // an ACTIONS row on the hub of a network without the task's transformation
        let other = KeyedChain::from_value(alchemiscale_model::json::parse(&network_chain_json(2, 1, "other")).unwrap()).unwrap();
        let other = store.create_network(&other, &scope, NetworkState::Active).await.unwrap();
        let other_id = crate::tasks::network_row_id(&mut store.write.acquire().await.unwrap(), &other.network).await.unwrap().unwrap();
        sqlx::query("INSERT INTO task_action (network_id, task_id, weight) SELECT $1, id, 0 FROM task WHERE gufe_key = $2")
            .bind(other_id)
            .bind(tasks[1].gufe_key().as_str())
            .execute(&store.write)
            .await
            .unwrap();
        assert_eq!(
            store.inconsistencies().await.unwrap(),
            vec![
                format!("task {} is actioned on a hub whose network does not hold its transformation", tasks[1]),
                format!("task {} is waiting and actioned but missing from that hub's claim queue", tasks[0]),
            ]
        );
        store.close().await;
    }

    /// Migration 0002 on a store that version 1 left with actioned tasks: the priorities
    /// are copied into the claim queue and claims follow them.
    #[tokio::test]
    async fn upgrading_from_version_1_keeps_actioned_tasks_claimable() {
        use alchemiscale_model::chain::KeyedChain;
        use alchemiscale_model::synthetic::network_chain_json;
        use alchemiscale_model::{ComputeServiceId, NetworkState};

        use crate::tasks::TaskRequest;
        use crate::{Store, StoreLocation, StoreOptions};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&StoreLocation::Sqlite { path: dir.path().join("state.db") }, &StoreOptions::default()).await.unwrap();
        let v1 = sqlx::migrate::Migrator {
            migrations: super::SQLITE_MIGRATIONS.migrations.iter().filter(|m| m.version == 1).cloned().collect::<Vec<_>>().into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        v1.run(&store.write).await.unwrap();
        assert!(matches!(store.schema_status().await.unwrap(), super::SchemaStatus::Outdated { applied: 1, .. }));

        // what version 1 stored: a network, three tasks, ACTIONS rows without the new columns
        let chain = KeyedChain::from_value(alchemiscale_model::json::parse(&network_chain_json(2, 1, "upgrade")).unwrap()).unwrap();
        let scope: alchemiscale_model::Scope = "up-grade-test".parse().unwrap();
        let created = store.create_network(&chain, &scope, NetworkState::Active).await.unwrap();
        let tf = store.network_transformations(&created.network).await.unwrap().remove(0);
        let reqs: Vec<TaskRequest> = (0..3).map(|_| TaskRequest { transformation: tf.clone(), extends: None }).collect();
        let tasks = store.create_tasks(&reqs, None).await.unwrap();
        sqlx::query("INSERT INTO task_action (network_id, task_id, weight) SELECT n.id, t.id, 0.5 FROM network n, task t")
            .execute(&store.write)
            .await
            .unwrap();
        sqlx::query("UPDATE task SET priority = 1 WHERE gufe_key = $1")
            .bind(tasks[2].gufe_key().as_str())
            .execute(&store.write)
            .await
            .unwrap();

        store.init().await.unwrap();
        assert!(store.schema_status().await.unwrap().is_current());
        let rows = sqlx::query("SELECT t.priority, q.priority FROM task_queue q JOIN task t ON t.id = q.task_id")
            .fetch_all(&store.write)
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert_eq!(sqlx::Row::try_get::<i64, _>(r, 0).unwrap(), sqlx::Row::try_get::<i64, _>(r, 1).unwrap());
        }
        let service = ComputeServiceId::mint("upgrader").unwrap();
        store.register_compute_service(&service, None).await.unwrap();
        let got = store.claim_taskhub_tasks(&created.taskhub, &service, 1, None).await.unwrap();
        assert_eq!(got, vec![Some(tasks[2].clone())], "the most urgent task comes first after the upgrade");
        let rest = store.claim_taskhub_tasks(&created.taskhub, &service, 5, None).await.unwrap();
        assert_eq!(rest.iter().flatten().count(), 2);
    }

    #[test]
    fn every_table_is_catalogued() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let sql: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<Vec<_>>().join("\n");
        // a table rebuilt by a later migration (SQLite) counts where it was first created
        let mut created: Vec<&str> = Vec::new();
        for name in sql.lines().filter_map(|l| l.strip_prefix("CREATE TABLE ")).map(|l| l.split_whitespace().next().unwrap()) {
            if !created.contains(&name) {
                created.push(name);
            }
        }
        let catalogued: Vec<&str> = super::TABLES.iter().map(|t| t.name).collect();
        let derived: Vec<&str> = created.iter().copied().filter(|t| super::DERIVED_TABLES.contains(t)).collect();
        assert_eq!(derived, super::DERIVED_TABLES, "derived tables exist");
        created.retain(|t| !super::DERIVED_TABLES.contains(t));
        assert_eq!(created, catalogued);
        for t in super::TABLES {
            let start = sql.find(&format!("CREATE TABLE {} (", t.name)).unwrap();
            let body = &sql[start..start + sql[start..].find(");").unwrap()];
            let cols: Vec<&str> = body
                .lines()
                .skip(1)
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("PRIMARY KEY") && !l.starts_with("CHECK") && !l.starts_with("--"))
                .map(|l| l.split_whitespace().next().unwrap())
                .collect();
            // columns later migrations add or drop
            let mut cols: Vec<String> = cols.into_iter().map(String::from).collect();
            for later in files.iter().skip(1).map(|f| std::fs::read_to_string(f).unwrap()) {
                let (add, drop) = (format!("ALTER TABLE {} ADD COLUMN ", t.name), format!("ALTER TABLE {} DROP COLUMN ", t.name));
                for l in later.lines() {
                    if let Some(c) = l.strip_prefix(add.as_str()) {
                        cols.push(c.split_whitespace().next().unwrap().to_string());
                    } else if let Some(c) = l.strip_prefix(drop.as_str()) {
                        let c = c.trim_end_matches(';').trim();
                        cols.retain(|x| x != c);
                    }
                }
            }
            let spec: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
            assert_eq!(cols, spec, "columns of {}", t.name);
        }
    }
}
