//! How the backend runs a hub's claim select, for regression tests of the claim path
//! (issue: a claim must touch a bounded number of rows whatever the size of the queue).
//!
//! [`Store::explain_hub_claim`] asks the backend about exactly the statement a claim runs
//! (the candidates of one hub, in (priority, claim rank) order, limited): on SQLite the
//! plan (`EXPLAIN QUERY PLAN`), on PostgreSQL the executed plan with its row counts
//! (`EXPLAIN (ANALYZE, FORMAT JSON)` in a transaction that is rolled back, so nothing
//! stays locked or claimed).

use sqlx::Row;

use crate::claims::{claim_plans, hub_select};
use crate::db::dialect;
use crate::error::Result;
use crate::networks::network_id_by_token;
use crate::{Backend, Store};
use alchemiscale_model::ScopedKey;

/// What the backend says about one claim select.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimPlan {
    /// The plan as text: SQLite's plan lines, or PostgreSQL's JSON plan.
    pub text: String,
    /// PostgreSQL: rows the plan's scans of `task_action` produced plus those their
    /// filters removed — how much of the queue the claim read. None on SQLite (its plan
    /// has no counts; read the plan instead).
    pub action_rows_read: Option<u64>,
    /// PostgreSQL: the same for the plan's scans of `task` (tasks looked at).
    pub task_rows_read: Option<u64>,
}

impl Store {
    /// Explain the select a claim of `count` tasks from `hub` (a TaskHub ScopedKey) runs.
    /// None if the hub does not exist.
    pub async fn explain_hub_claim(&self, hub: &ScopedKey, count: usize) -> Result<Option<ClaimPlan>> {
        let mut tx = self.begin_write().await?;
        claim_plans(&mut tx, self.backend).await?;
        let Some(hub_id) = network_id_by_token(&mut tx, hub.gufe_key().token(), hub.scope()).await? else { return Ok(None) };
        let select = hub_select(self.backend, false, false);
        let plan = match self.backend {
            Backend::Sqlite => {
                let rows = sqlx::query(&dialect(self.backend, &format!("EXPLAIN QUERY PLAN {select}")))
                    .bind(hub_id)
                    .bind(count as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                let lines = rows.iter().map(|r| r.try_get::<String, _>(3)).collect::<std::result::Result<Vec<_>, _>>()?;
                ClaimPlan { text: lines.join("\n"), action_rows_read: None, task_rows_read: None }
            }
            Backend::Postgres => {
                // the custom plan (for these values), as a claim's first executions get it
                let sql = dialect(self.backend, &format!("EXPLAIN (ANALYZE) {select}"));
                let rows = sqlx::query(&sql).bind(hub_id).bind(count as i64).fetch_all(&mut *tx).await?;
                let custom = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<Vec<_>, _>>()?.join("\n");
                // the generic plan, which PostgreSQL may switch a prepared claim statement
                // to after five executions, planned without knowing the hub
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let name = format!("claim_plan_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                let prepare = format!("PREPARE {name} (BIGINT, BIGINT) AS {}", dialect(self.backend, &select));
                sqlx::query(&prepare).persistent(false).execute(&mut *tx).await?;
                sqlx::query("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)").fetch_one(&mut *tx).await?;
                let explain = format!("EXPLAIN (ANALYZE) EXECUTE {name} ({hub_id}, {count})");
                let rows = sqlx::query(&explain).persistent(false).fetch_all(&mut *tx).await;
                // a prepared statement outlives the transaction: always deallocate it
                sqlx::query(&format!("DEALLOCATE {name}")).persistent(false).execute(&mut *tx).await?;
                let generic = rows?.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<Vec<_>, _>>()?.join("\n");
                let read = |relation: &str| rows_read(&custom, relation).max(rows_read(&generic, relation));
                ClaimPlan {
                    action_rows_read: Some(read("task_action")),
                    task_rows_read: Some(read("task")),
                    text: format!("custom plan:\n{custom}\n\ngeneric plan:\n{generic}"),
                }
            }
        };
        tx.rollback().await?;
        Ok(Some(plan))
    }
}

/// Rows produced and removed by filters, summed over the plan nodes that scan `relation`
/// (per-loop counts times loops, as PostgreSQL's text plan reports them: a node line
/// `-> Index Scan using … on task_action a (cost=…) (actual time=… rows=10 loops=1)`
/// followed by its detail lines, e.g. `Rows Removed by Filter: 5`).
fn rows_read(plan: &str, relation: &str) -> u64 {
    let on = format!(" on {relation} ");
    let number_after = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.rfind(key)? + key.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
    };
    let mut total = 0.0;
    let mut loops = None;
    for line in plan.lines() {
        let is_node = line.trim_start().starts_with("->") || !line.starts_with(' ');
        if is_node {
            loops = None;
            if line.contains(&on) {
                let l = number_after(line, "loops=").unwrap_or(1.0);
                total += number_after(line, " rows=").unwrap_or(0.0) * l;
                loops = Some(l);
            }
        } else if let (Some(l), Some(removed)) = (loops, number_after(line, "Rows Removed by Filter: ")) {
            total += removed * l;
        }
    }
    total as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_sums_the_scans_of_a_relation() {
        let plan = "Limit  (cost=0.85..20.10 rows=10 width=80) (actual time=0.05..0.20 rows=10 loops=1)
  ->  Nested Loop  (cost=0.85..1000.00 rows=500 width=80) (actual time=0.05..0.19 rows=10 loops=1)
        ->  Index Scan using task_action_queue on task_action a  (cost=0.42..500.00 rows=500 width=24) (actual time=0.02..0.05 rows=12 loops=1)
              Index Cond: (network_id = $1)
              Filter: (weight > '0'::double precision)
              Rows Removed by Filter: 5
        ->  Index Scan using task_pkey on task t  (cost=0.42..0.50 rows=1 width=64) (actual time=0.01..0.01 rows=1 loops=12)
              Index Cond: (id = a.task_id)
              Rows Removed by Filter: 100
        ->  Index Scan using task_action_task on task_action a2  (cost=0.42..0.50 rows=1 width=8) (actual time=0.01..0.01 rows=2 loops=3)
Planning Time: 0.5 ms
Execution Time: 0.3 ms";
        assert_eq!(rows_read(plan, "task_action"), 12 + 5 + 6);
        assert_eq!(rows_read(plan, "task"), 12 + 1200);
    }
}

/// PostgreSQL: how the `task` table takes status changes (see migration 0007).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpdates {
    /// Row updates of `task` so far, and how many of them were heap-only (HOT): wrote no
    /// index entry. From the statistics collector, which reports with a delay of up to a
    /// second or so.
    pub updates: i64,
    pub heap_only: i64,
    /// Indexes of `task` whose key, included columns or predicate use `status`.
    pub status_indexes: Vec<String>,
    /// The table's fill factor, if set.
    pub fillfactor: Option<i64>,
}

impl Store {
    /// How `task` takes status changes (PostgreSQL; None on SQLite).
    pub async fn task_updates(&self) -> Result<Option<TaskUpdates>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut conn = self.read.acquire().await?;
        let counts = sqlx::query("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = CAST('task' AS regclass)")
            .fetch_one(&mut *conn)
            .await?;
        let indexes = sqlx::query(
            "SELECT CAST(c.relname AS TEXT) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = CAST('task' AS regclass) \
             AND (pg_get_indexdef(i.indexrelid) LIKE '%status%')",
        )
        .fetch_all(&mut *conn)
        .await?;
        let fillfactor = sqlx::query(
            "SELECT CAST(substr(o, 12) AS BIGINT) FROM pg_class c, unnest(c.reloptions) o \
             WHERE c.oid = CAST('task' AS regclass) AND o LIKE 'fillfactor=%'",
        )
        .fetch_optional(&mut *conn)
        .await?;
        Ok(Some(TaskUpdates {
            updates: counts.try_get(0)?,
            heap_only: counts.try_get(1)?,
            status_indexes: indexes.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<_, _>>()?,
            fillfactor: fillfactor.map(|r| r.try_get(0)).transpose()?,
        }))
    }
}
