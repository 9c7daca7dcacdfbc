//! The figures monitoring reads from the store (the servers' `/metrics`): tasks by status
//! per scope, compute services, managers, strategies, and the connection pools.
//!
//! Every figure is one aggregate statement (the task counts read the task rows: no index
//! holds the status, so that a claim's status change writes no index entry, see migration
//! 0007). A census costs the same whether one API instance or several ask for it.

use alchemiscale_model::Scope;

use crate::db::{get_i64, get_str};
use crate::error::{Result, StoreError};
use crate::Store;

/// A snapshot of what the store holds, for monitoring.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    /// (scope, status, tasks), every scope and status that has tasks.
    pub tasks: Vec<(Scope, String, i64)>,
    /// Compute services registered (a registration lives while it heartbeats).
    pub compute_services: i64,
    /// Tasks claimed by them.
    pub claimed_tasks: i64,
    /// Compute managers: (name, status `OK`/`ERROR`, saturation if reported).
    pub managers: Vec<(String, String, Option<f64>)>,
    /// Strategies by status (`awake`, `dormant`, `error`).
    pub strategies: Vec<(String, i64)>,
    /// Strategy executions recorded so far, over every network.
    pub strategy_iterations: i64,
    /// Connections of this process's pools: (open, idle).
    pub pool: (u32, u32),
}

impl Store {
    /// Count what the store holds (see [`Census`]).
    pub async fn census(&self) -> Result<Census> {
        let mut conn = self.read.acquire().await?;
        let mut census = Census::default();
        for r in sqlx::query("SELECT org, campaign, project, status, COUNT(*) FROM task GROUP BY org, campaign, project, status")
            .fetch_all(&mut *conn)
            .await?
        {
            let scope = Scope::new(Some(&get_str(&r, 0)?), Some(&get_str(&r, 1)?), Some(&get_str(&r, 2)?))
                .map_err(|e| StoreError::Invalid(format!("stored task scope: {e}")))?;
            census.tasks.push((scope, get_str(&r, 3)?, get_i64(&r, 4)?));
        }
        let r =
            sqlx::query("SELECT (SELECT COUNT(*) FROM compute_service), (SELECT COUNT(*) FROM task_claim)").fetch_one(&mut *conn).await?;
        (census.compute_services, census.claimed_tasks) = (get_i64(&r, 0)?, get_i64(&r, 1)?);
        for r in sqlx::query("SELECT name, status, saturation FROM compute_manager ORDER BY name").fetch_all(&mut *conn).await? {
            let saturation: Option<f64> = sqlx::Row::try_get(&r, 2)?;
            census.managers.push((get_str(&r, 0)?, get_str(&r, 1)?, saturation));
        }
        for r in sqlx::query("SELECT status, COUNT(*) FROM network_strategy GROUP BY status ORDER BY status").fetch_all(&mut *conn).await? {
            census.strategies.push((get_str(&r, 0)?, get_i64(&r, 1)?));
        }
        let r = sqlx::query("SELECT CAST(COALESCE(SUM(iterations), 0) AS BIGINT) FROM network_strategy").fetch_one(&mut *conn).await?;
        census.strategy_iterations = get_i64(&r, 0)?;
        drop(conn);
        let (mut open, mut idle) = (self.read.size(), self.read.num_idle() as u32);
        if self.backend == crate::Backend::Sqlite {
            open += self.write.size();
            idle += self.write.num_idle() as u32;
        }
        census.pool = (open, idle);
        Ok(census)
    }
}
