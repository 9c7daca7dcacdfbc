//! Backups on a schedule (`serve` / `api` `--backup-every`), one holder at a time.
//!
//! Every server started with a schedule competes for the `backup` lease, taken for the
//! whole interval: whoever takes it writes the backup, and nobody (itself included)
//! writes another until the lease runs out. So several API instances on one store write
//! one backup per interval between them, and when the instance that wrote the last one
//! dies, another writes the next. A backup that fails keeps the lease only for a tenth of
//! the interval (at most 10 minutes), so the next attempt comes sooner, from any instance.
//! Failures are logged; the server keeps serving.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alchemiscale_objects::Objects;
use alchemiscale_store::Store;

/// The lease's name in the store.
pub const LEASE: &str = "backup";

/// What a scheduled backup does.
#[derive(Clone)]
pub struct Schedule {
    pub every: Duration,
    pub target: Objects,
    pub keep: usize,
    /// Where dumps are assembled and verified.
    pub work_dir: PathBuf,
    /// This process's name in the lease (unique per process).
    pub holder: String,
}

impl Schedule {
    fn retry_after_failure(&self) -> Duration {
        (self.every / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    fn poll(&self) -> Duration {
        (self.every / 10).clamp(Duration::from_millis(200), Duration::from_secs(60))
    }
}

/// Run `schedule` in the background until the task is aborted.
pub fn spawn_schedule(store: Store, schedule: Schedule) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next_try = Instant::now();
        loop {
            if Instant::now() >= next_try {
                match store.acquire_lease(LEASE, &schedule.holder, schedule.every).await {
                    Ok(true) => {
                        let wait = if run_once(&store, &schedule).await { schedule.every } else { schedule.retry_after_failure() };
                        next_try = Instant::now() + wait;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot take the backup lease"),
                }
            }
            tokio::time::sleep(schedule.poll()).await;
        }
    })
}

/// True when the backup was written.
async fn run_once(store: &Store, schedule: &Schedule) -> bool {
    let started = Instant::now();
    match crate::take(store, &schedule.target, schedule.keep, &schedule.work_dir).await {
        Ok(report) => {
            tracing::info!(
                backup = %report.name,
                target = schedule.target.description(),
                rows = report.stats.rows,
                bytes = report.bytes,
                removed = report.removed.len(),
                holder = %schedule.holder,
                seconds = started.elapsed().as_secs_f64(),
                "backup written and verified"
            );
            true
        }
        Err(e) => {
            tracing::error!(
                target = schedule.target.description(),
                error = format!("{e:#}"),
                "scheduled backup failed; earlier backups are kept"
            );
            let retry = schedule.retry_after_failure();
            if let Err(e) = store.acquire_lease(LEASE, &schedule.holder, retry).await {
                tracing::warn!(error = %e, "cannot shorten the backup lease after a failure");
            }
            false
        }
    }
}
