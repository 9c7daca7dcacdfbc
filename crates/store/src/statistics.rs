//! Planner statistics kept fresh by the store itself (PostgreSQL).
//!
//! A store loaded in bulk — tens of thousands of tasks created and actioned in minutes —
//! has no statistics about what it now holds until autovacuum gets round to analysing it,
//! and until then PostgreSQL plans for tables of a few rows: sequential scans where one
//! index probe would do, a hub read whole where its first rows would do. Nobody should have
//! to run ANALYZE by hand after creating tasks, so the store counts the rows its bulk
//! changes touch, and once [`BULK_ROWS`] have accumulated it analyses the tables those
//! changes grow, in the background (ANALYZE takes no lock that blocks reads or writes;
//! one at a time per store). The claim statements do not wait for it: their plans are
//! pinned regardless (see `claims::claim_plans`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::{Backend, Store};

/// Rows changed in bulk after which the statistics are refreshed.
pub const BULK_ROWS: u64 = 10_000;

/// Shared by the clones of one store.
#[derive(Debug, Default)]
pub(crate) struct Freshness {
    changed: AtomicU64,
    running: AtomicBool,
}

impl Store {
    /// Count `rows` changed by a bulk operation that has committed; on PostgreSQL, start a
    /// background ANALYZE of the task tables once [`BULK_ROWS`] have accumulated.
    pub(crate) fn note_bulk_change(&self, rows: u64) {
        if self.backend != Backend::Postgres || rows == 0 {
            return;
        }
        let state: &Arc<Freshness> = &self.freshness;
        if state.changed.fetch_add(rows, Ordering::Relaxed) + rows < BULK_ROWS {
            return;
        }
        if state.running.swap(true, Ordering::AcqRel) {
            return; // one is running; the rows counted meanwhile trigger the next
        }
        state.changed.store(0, Ordering::Relaxed);
        let (pool, state) = (self.write.clone(), state.clone());
        tokio::spawn(async move {
            match sqlx::query("ANALYZE task, task_action, task_queue, task_claim").execute(&pool).await {
                Ok(_) => debug!("Refreshed planner statistics after bulk changes"),
                Err(e) => warn!("Could not refresh planner statistics: {e}"),
            }
            state.running.store(false, Ordering::Release);
        });
    }
}
