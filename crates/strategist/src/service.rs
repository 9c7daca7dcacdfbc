//! The strategist's loop.
//!
//! Every cycle fetches the strategies due (the settings' scopes; the service's
//! `sleep_interval` is the minimum interval of every strategy) and runs them, at most
//! `max_workers` at a time; each execution commits its own changes as it finishes.
//! Whenever `sleep_interval` passes while executions are still running (counted from the
//! start of the current wait), the due strategies are fetched again and those not running
//! and not run within `sleep_interval` are started too. After the cycle the loop sleeps
//! what remains of `sleep_interval` since the cycle began. A stop request ends the loop:
//! native executions finish (and commit), Python ones are killed and leave nothing
//! behind.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use alchemiscale_compute::StopHandle;
use alchemiscale_model::Scope;
use alchemiscale_store::strategist::DueStrategy;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cache::ResultCache;
use crate::execute::{Context, Ended, Execution};
use crate::python::PythonConfig;
use crate::settings::Settings;

/// What a cycle did, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleSummary {
    pub due: usize,
    pub committed: usize,
    pub errored: usize,
    pub still_dormant: usize,
    pub busy: usize,
    pub discarded: usize,
    pub skipped: usize,
    pub tasks_created: usize,
    pub tasks_actioned: usize,
    pub tasks_cancelled: usize,
}

impl CycleSummary {
    fn add(&mut self, e: &Execution) {
        match &e.ended {
            Ended::Committed { report, .. } => {
                self.committed += 1;
                if report.state.status == alchemiscale_model::status::StrategyStatus::Error {
                    self.errored += 1;
                }
                self.tasks_created += report.created;
                self.tasks_actioned += report.actioned;
                self.tasks_cancelled += report.cancelled;
            }
            Ended::StillDormant => self.still_dormant += 1,
            Ended::Busy => self.busy += 1,
            Ended::Discarded(_) => self.discarded += 1,
            Ended::Skipped(_) => self.skipped += 1,
        }
    }
}

/// The strategist.
pub struct Strategist {
    context: Context,
    scopes: Vec<Scope>,
    sleep_interval: Duration,
    max_workers: usize,
    stop: StopHandle,
}

/// Log one execution.
fn log(e: &Execution) {
    let ms = e.duration.as_secs_f64() * 1e3;
    match &e.ended {
        Ended::Committed { report, weights, phases } => {
            let s = &report.state;
            match &s.exception {
                Some((class, message)) => tracing::warn!(
                    network = %e.network, duration_ms = ms, status = %s.status, exception = %class, message = %message,
                    "strategy execution failed; its state records the error until a user wakes it"
                ),
                None => tracing::info!(
                    network = %e.network, duration_ms = ms, status = %s.status, iteration = s.iterations,
                    results = s.last_iteration_result_count, weighed = weights.weighed, null_weights = weights.null,
                    min_weight = weights.min.unwrap_or(0.0), max_weight = weights.max.unwrap_or(0.0),
                    created = report.created, actioned = report.actioned, cancelled = report.cancelled,
                    read_ms = phases.read_ms, weigh_ms = phases.weigh_ms, commit_ms = phases.commit_ms,
                    "strategy executed"
                ),
            }
        }
        Ended::StillDormant => tracing::debug!(network = %e.network, duration_ms = ms, "strategy dormant, no new results"),
        Ended::Busy => tracing::debug!(network = %e.network, "strategy executing in another strategist process"),
        Ended::Discarded(why) => tracing::warn!(network = %e.network, duration_ms = ms, "{why}"),
        Ended::Skipped(why) => tracing::warn!(network = %e.network, duration_ms = ms, "strategy execution skipped: {why}"),
    }
}

impl Strategist {
    /// A strategist over these stores with `settings` (the cache directory is created
    /// when Python strategies are configured and `use_local_cache` is on).
    pub fn from_settings(
        store: alchemiscale_store::Store,
        objects: Option<alchemiscale_objects::Objects>,
        settings: &Settings,
    ) -> std::io::Result<Strategist> {
        let python = settings.python.as_ref().map(|interpreter| PythonConfig {
            interpreter: interpreter.clone(),
            timeout: settings.python_timeout(),
            env: settings.python_env.clone(),
        });
        let cache = match (&python, settings.use_local_cache) {
            (Some(_), true) => {
                let dir = settings.cache_directory.clone().unwrap_or_else(ResultCache::default_dir);
                Some(ResultCache::open(&dir, settings.cache_size_limit)?)
            }
            _ => None,
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
        let holder = format!("strategist-{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let context = Context { store, objects, python, cache, holder: holder.into(), graphs: Default::default() };
        let scopes = settings.scopes().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Strategist::new(context, scopes, Duration::from_secs(settings.sleep_interval), settings.max_workers as usize))
    }

    pub fn new(context: Context, scopes: Vec<Scope>, sleep_interval: Duration, max_workers: usize) -> Strategist {
        Strategist { context, scopes, sleep_interval, max_workers: max_workers.max(1), stop: StopHandle::new() }
    }

    /// Stops [`Strategist::run`] (and kills running Python strategies).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    async fn due(&self) -> Vec<DueStrategy> {
        let min = self.sleep_interval.as_secs() as i64;
        match self.context.store.due_strategies(&self.scopes, min, chrono::Utc::now()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the strategies due; trying again next cycle");
                Vec::new()
            }
        }
    }

    /// One cycle: run every due strategy, re-querying while long executions run.
    pub async fn cycle(&self) -> CycleSummary {
        let mut summary = CycleSummary::default();
        let due = self.due().await;
        if due.is_empty() {
            tracing::debug!("no strategies due");
            return summary;
        }
        tracing::info!(due = due.len(), "executing strategies");
        let workers = Arc::new(Semaphore::new(self.max_workers));
        let mut running: HashSet<i64> = HashSet::new();
        let mut set: JoinSet<(i64, Execution)> = JoinSet::new();
        let spawn = |set: &mut JoinSet<(i64, Execution)>, running: &mut HashSet<i64>, d: DueStrategy| {
            running.insert(d.network_id);
            let (context, stop, workers) = (self.context.clone(), self.stop.clone(), workers.clone());
            set.spawn(async move {
                let _permit = workers.acquire_owned().await.expect("semaphore is never closed");
                let e = context.execute(&d, &stop).await;
                (d.network_id, e)
            });
        };
        summary.due = due.len();
        for d in due {
            spawn(&mut set, &mut running, d);
        }
        let mut wait_until = Instant::now() + self.sleep_interval;
        loop {
            tokio::select! {
                done = set.join_next() => match done {
                    None => break,
                    Some(Ok((network, e))) => {
                        running.remove(&network);
                        log(&e);
                        summary.add(&e);
                    }
                    Some(Err(e)) => tracing::error!(error = %e, "a strategy execution panicked"),
                },
                _ = tokio::time::sleep_until(wait_until), if !self.stop.is_stopped() => {
                    let now = chrono::Utc::now();
                    for d in self.due().await {
                        let recent = d.state.last_iteration.is_some_and(|t| (now - t).to_std().unwrap_or_default() < self.sleep_interval);
                        if !running.contains(&d.network_id) && !recent {
                            summary.due += 1;
                            spawn(&mut set, &mut running, d);
                        }
                    }
                    wait_until = Instant::now() + self.sleep_interval;
                }
            }
        }
        summary
    }

    /// Cycle until stopped, each cycle starting `sleep_interval` after the previous one
    /// began (or at once, if it took longer).
    pub async fn run(&self) {
        tracing::info!(sleep_interval_s = self.sleep_interval.as_secs(), max_workers = self.max_workers, "strategist started");
        while !self.stop.is_stopped() {
            let started = Instant::now();
            self.cycle().await;
            let remaining = self.sleep_interval.saturating_sub(started.elapsed());
            if self.stop.sleep(remaining).await {
                break;
            }
        }
        tracing::info!("strategist stopped");
    }
}
