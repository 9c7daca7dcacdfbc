//! How the backend runs a hub's claim select, for regression tests of the claim path
//! (issue: a claim must touch a bounded number of rows whatever the size of the queue).
//!
//! [`Store::explain_hub_claim`] asks the backend about exactly the statement a claim runs
//! (the candidates of one hub, in (priority, claim rank) order, limited): on SQLite the
//! plan (`EXPLAIN QUERY PLAN`), on PostgreSQL the executed plan with its row counts
//! (`EXPLAIN (ANALYZE, FORMAT JSON)` in a transaction that is rolled back, so nothing
//! stays locked or claimed).

use sqlx::Row;

use crate::claim_select::{held_hint, hub_select};
use crate::claims::claim_plans;
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
    /// PostgreSQL: rows the plan's scans of `task_queue` produced plus those their
    /// filters removed — how much of the queue the claim read. None on SQLite (its plan
    /// has no counts; read the plan instead).
    pub queue_rows_read: Option<u64>,
    /// PostgreSQL: the same for the plan's scans of `task` (tasks looked at).
    pub task_rows_read: Option<u64>,
    /// PostgreSQL: pages (index and table) the plan's scans of `task_queue` read, dead
    /// index entries included (see `claim_select` on the queue's graveyard).
    pub queue_pages_read: Option<u64>,
}

impl Store {
    /// Explain the select a claim of `count` tasks from `hub` (a TaskHub ScopedKey) runs
    /// when it reads the hub's queue from its start. None if the hub does not exist.
    pub async fn explain_hub_claim(&self, hub: &ScopedKey, count: usize) -> Result<Option<ClaimPlan>> {
        self.explain(hub, count, false).await
    }

    /// Explain the select a claim of `count` tasks from `hub` runs when it starts at the
    /// start hint this process holds for the hub (PostgreSQL; see `claim_select`), however
    /// old the hint. None if the hub does not exist or no hint is held (always on SQLite).
    pub async fn explain_hub_claim_from_hint(&self, hub: &ScopedKey, count: usize) -> Result<Option<ClaimPlan>> {
        self.explain(hub, count, true).await
    }

    async fn explain(&self, hub: &ScopedKey, count: usize, from_hint: bool) -> Result<Option<ClaimPlan>> {
        let mut tx = self.begin_write().await?;
        claim_plans(&mut tx, self.backend).await?;
        let Some(hub_id) = network_id_by_token(&mut tx, hub.gufe_key().token(), hub.scope()).await? else { return Ok(None) };
        let start = match from_hint {
            true => match held_hint(self, hub_id) {
                Some(start) => Some(start),
                None => return Ok(None),
            },
            false => None,
        };
        let select = hub_select(self.backend, false, false, start.is_some());
        let plan = match self.backend {
            Backend::Sqlite => {
                let rows = sqlx::query(&dialect(self.backend, &format!("EXPLAIN QUERY PLAN {select}")))
                    .bind(hub_id)
                    .bind(count as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                let lines = rows.iter().map(|r| r.try_get::<String, _>(3)).collect::<std::result::Result<Vec<_>, _>>()?;
                ClaimPlan { text: lines.join("\n"), queue_rows_read: None, task_rows_read: None, queue_pages_read: None }
            }
            Backend::Postgres => {
                // the custom plan (for these values), as a claim's first executions get it
                let sql = dialect(self.backend, &format!("EXPLAIN (ANALYZE, BUFFERS) {select}"));
                let mut q = sqlx::query(&sql).bind(hub_id);
                if let Some((priority, rank)) = start {
                    q = q.bind(priority).bind(rank);
                }
                let rows = q.bind(count as i64).fetch_all(&mut *tx).await?;
                let custom = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<Vec<_>, _>>()?.join("\n");
                // the generic plan, which PostgreSQL may switch a prepared claim statement
                // to after five executions, planned without knowing the hub
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let name = format!("claim_plan_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                let (types, values) = match start {
                    Some((priority, rank)) => {
                        ("BIGINT, BIGINT, DOUBLE PRECISION, BIGINT", format!("{hub_id}, {priority}, {rank:e}, {count}"))
                    }
                    None => ("BIGINT, BIGINT", format!("{hub_id}, {count}")),
                };
                let prepare = format!("PREPARE {name} ({types}) AS {}", dialect(self.backend, &select));
                sqlx::query(&prepare).persistent(false).execute(&mut *tx).await?;
                sqlx::query("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)").fetch_one(&mut *tx).await?;
                let explain = format!("EXPLAIN (ANALYZE, BUFFERS) EXECUTE {name} ({values})");
                let rows = sqlx::query(&explain).persistent(false).fetch_all(&mut *tx).await;
                // a prepared statement outlives the transaction: always deallocate it
                sqlx::query(&format!("DEALLOCATE {name}")).persistent(false).execute(&mut *tx).await?;
                let generic = rows?.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<Vec<_>, _>>()?.join("\n");
                let read = |relation: &str| rows_read(&custom, relation).max(rows_read(&generic, relation));
                ClaimPlan {
                    queue_rows_read: Some(read("task_queue")),
                    task_rows_read: Some(read("task")),
                    queue_pages_read: Some(pages_read(&custom, "task_queue").max(pages_read(&generic, "task_queue"))),
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
    let mut total = 0.0;
    for (node, details) in scans_of(plan, relation) {
        let loops = number_after(node, "loops=").unwrap_or(1.0);
        total += number_after(node, " rows=").unwrap_or(0.0) * loops;
        total += details.iter().filter_map(|l| number_after(l, "Rows Removed by Filter: ")).sum::<f64>() * loops;
    }
    total as u64
}

/// Buffers (shared pages hit or read) of the plan nodes that scan `relation`, from the
/// detail lines `Buffers: shared hit=12 read=3` (totals over the node's loops).
fn pages_read(plan: &str, relation: &str) -> u64 {
    let mut total = 0.0;
    for (_, details) in scans_of(plan, relation) {
        for line in details.iter().filter(|l| l.trim_start().starts_with("Buffers: shared")) {
            total += number_after(line, "hit=").unwrap_or(0.0) + number_after(line, "read=").unwrap_or(0.0);
        }
    }
    total as u64
}

/// The plan nodes (lines) of a text plan that scan `relation`, each with its detail lines.
fn scans_of<'a>(plan: &'a str, relation: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    let on = format!(" on {relation} ");
    let mut scans: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut current = false;
    for line in plan.lines() {
        let is_node = line.trim_start().starts_with("->") || !line.starts_with(' ');
        if is_node {
            current = line.contains(&on);
            if current {
                scans.push((line, Vec::new()));
            }
        } else if current {
            if let Some((_, details)) = scans.last_mut() {
                details.push(line);
            }
        }
    }
    scans
}

/// The number that follows the last occurrence of `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.rfind(key)? + key.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
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
              Buffers: shared hit=40 read=3
        ->  Index Scan using task_pkey on task t  (cost=0.42..0.50 rows=1 width=64) (actual time=0.01..0.01 rows=1 loops=12)
              Index Cond: (id = a.task_id)
              Rows Removed by Filter: 100
              Buffers: shared hit=36
        ->  Index Scan using task_action_task on task_action a2  (cost=0.42..0.50 rows=1 width=8) (actual time=0.01..0.01 rows=2 loops=3)
              Buffers: shared hit=7
Planning Time: 0.5 ms
Execution Time: 0.3 ms";
        assert_eq!(rows_read(plan, "task_action"), 12 + 5 + 6);
        assert_eq!(rows_read(plan, "task"), 12 + 1200);
        assert_eq!(pages_read(plan, "task_action"), 40 + 3 + 7);
        assert_eq!(pages_read(plan, "task"), 36);
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
