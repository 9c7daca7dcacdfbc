//! The compute API's background work, one holder at a time across instances.
//!
//! Every compute API process runs a reaper ([`spawn_reaper`]) with two jobs:
//!
//! * **Registration expiry** (every tenth of the expiry window, at least every second, at
//!   most every minute): compute-service registrations whose heartbeat is older than
//!   `registration_expire_seconds` are removed and their running tasks go back to waiting.
//!   Upstream expires only when some service heartbeats.
//! * **Staging sweep** (hourly): staging objects older than a day — uploads cut short by a
//!   crash — are removed from the object store.
//!
//! With several instances on one store each job runs in one of them at a time, chosen
//! through the store's leases (`alchemiscale_store` `lease.rs`):
//!
//! * Expiry holds the [`REAPER_LEASE`] lease. Each period every reaper tries to take it
//!   for [`LEASE_PERIODS`] periods: the holder's attempt renews it and it expires the
//!   registrations; the others' attempts fail and they do nothing. A holder that dies
//!   (SIGKILL, machine lost) stops renewing, and within `LEASE_PERIODS` + 1 periods
//!   another instance takes over. A holder stalled past its lease (a pause longer than
//!   the TTL) may expire once more alongside its successor: harmless, each expiry is one
//!   transaction and expiring twice finds nothing the second time.
//! * The sweep holds the [`STAGING_LEASE`] lease for the whole interval, like scheduled
//!   backups (`alchemiscale_backup::schedule`): whoever takes it sweeps, and nobody
//!   sweeps again until it runs out, so all instances together sweep once an hour, and
//!   when the sweeper dies another sweeps next. A sweep that fails keeps the lease for a
//!   tenth of the interval only, so the next attempt, from any instance, comes sooner.
//!
//! Holder names are unique per process and reaper (`reaper-{host}-{pid}-{random}`). A
//! stopped server does not give its lease up: the next holder takes over when it runs out
//! (seconds to three minutes; registrations expire after 30 minutes by default).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alchemiscale_objects::Objects;
use alchemiscale_store::Store;

use crate::{ApiSettings, AppState};

/// The lease of registration expiry.
pub const REAPER_LEASE: &str = "reaper";
/// The lease of the staging sweep.
pub const STAGING_LEASE: &str = "staging-sweep";
/// The expiry lease lasts this many reaper periods (renewed every period).
pub const LEASE_PERIODS: u32 = 3;
/// How often, and past what age, staging objects of interrupted uploads are removed.
pub const STAGING_SWEEP_EVERY: Duration = Duration::from_secs(3600);
pub const STAGING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A name for this process in a lease: `{role}-{host}-{pid}-{8 random hex digits}`.
pub fn holder_name(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    format!("{role}-{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// How a reaper runs.
#[derive(Debug, Clone)]
pub struct ReaperOptions {
    /// This reaper's name in the leases (unique per process).
    pub holder: String,
    /// Registrations silent this long expire.
    pub expire_seconds: i64,
    /// How often expiry runs (and the lease is renewed).
    pub period: Duration,
    /// How long the expiry lease lasts without renewal.
    pub lease_ttl: Duration,
    pub sweep_every: Duration,
    pub staging_max_age: Duration,
}

impl ReaperOptions {
    /// The server's settings: a period of a tenth of the expiry window (1 s to 60 s), a
    /// lease of [`LEASE_PERIODS`] periods, an hourly sweep of day-old staging objects.
    pub fn for_settings(settings: &ApiSettings) -> ReaperOptions {
        let expire = settings.registration_expire_seconds.max(1);
        let period = Duration::from_millis(((expire as u64) * 100).clamp(1000, 60_000));
        ReaperOptions {
            holder: holder_name("reaper"),
            expire_seconds: expire,
            period,
            lease_ttl: period * LEASE_PERIODS,
            sweep_every: STAGING_SWEEP_EVERY,
            staging_max_age: STAGING_MAX_AGE,
        }
    }
}

/// What one reaper did (for tests and logs).
#[derive(Debug, Default)]
pub struct ReaperStats {
    /// Expiry runs (periods in which this reaper held the lease).
    pub expiry_runs: AtomicU64,
    /// Registrations this reaper expired.
    pub expired: AtomicU64,
    /// Staging sweeps this reaper ran.
    pub sweeps: AtomicU64,
}

/// A running reaper.
pub struct Reaper {
    pub holder: String,
    pub stats: Arc<ReaperStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Reaper {
    /// Start a reaper for `state` (its store, object store and settings).
    pub fn spawn(state: AppState, options: ReaperOptions) -> Reaper {
        let stats = Arc::new(ReaperStats::default());
        let holder = options.holder.clone();
        let task = tokio::spawn(run(state, options, stats.clone()));
        Reaper { holder, stats, task }
    }

    /// Stop it the way a killed process stops: its leases stay until they run out.
    pub fn abort(&self) {
        self.task.abort();
    }

    pub fn into_task(self) -> tokio::task::JoinHandle<()> {
        self.task
    }
}

/// Start the reaper of a compute API with the server's settings (see the module doc).
pub fn spawn_reaper(state: AppState) -> tokio::task::JoinHandle<()> {
    let options = ReaperOptions::for_settings(state.settings());
    Reaper::spawn(state, options).into_task()
}

async fn run(state: AppState, o: ReaperOptions, stats: Arc<ReaperStats>) {
    let store = state.store().clone();
    let objects = state.objects().ok().cloned();
    let mut tick = tokio::time::interval(o.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut holding = false;
    let mut next_sweep = Instant::now();
    loop {
        tick.tick().await;
        if let Some(objects) = &objects {
            if Instant::now() >= next_sweep {
                let retry = (o.sweep_every / 10).max(o.period);
                match sweep_staging(&store, objects, &o.holder, o.sweep_every, o.staging_max_age).await {
                    Ok(Some(_)) => {
                        stats.sweeps.fetch_add(1, Ordering::Relaxed);
                        next_sweep = Instant::now() + o.sweep_every;
                    }
                    Ok(None) => {}
                    Err(SweepError::Lease(e)) => tracing::warn!(error = %e, "cannot take the staging-sweep lease"),
                    Err(SweepError::Objects(e)) => {
                        tracing::warn!(error = %e, "could not sweep the object store's staging place");
                        // keep the lease only until the retry, so any instance may try then
                        if let Err(e) = store.acquire_lease(STAGING_LEASE, &o.holder, retry).await {
                            tracing::warn!(error = %e, "cannot shorten the staging-sweep lease after a failure");
                        }
                        next_sweep = Instant::now() + retry;
                    }
                }
            }
        }
        match store.acquire_lease(REAPER_LEASE, &o.holder, o.lease_ttl).await {
            Ok(true) => {
                if !holding {
                    tracing::info!(holder = %o.holder, "took the reaper lease: this instance expires stale registrations");
                    holding = true;
                }
                stats.expiry_runs.fetch_add(1, Ordering::Relaxed);
                match store.expire_compute_services(o.expire_seconds).await {
                    Ok(ids) if !ids.is_empty() => {
                        stats.expired.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        tracing::warn!(expired = ?ids, "compute service registrations expired");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "expiring compute service registrations failed"),
                }
            }
            Ok(false) => {
                if holding {
                    tracing::warn!(holder = %o.holder, "lost the reaper lease to another instance");
                    holding = false;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot take the reaper lease"),
        }
    }
}

/// Why a staging sweep did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The lease could not be taken (the state store is unavailable).
    #[error(transparent)]
    Lease(#[from] alchemiscale_store::StoreError),
    /// The lease was taken, the sweep failed.
    #[error(transparent)]
    Objects(#[from] alchemiscale_objects::ObjectError),
}

/// One staging sweep by `holder`, if the [`STAGING_LEASE`] lease is free (it is then
/// taken for `every`): `Some(removed)`, or `None` when another instance swept within
/// the interval. The same holder may take its own lease again (its loop keeps time).
pub async fn sweep_staging(
    store: &Store,
    objects: &Objects,
    holder: &str,
    every: Duration,
    max_age: Duration,
) -> Result<Option<usize>, SweepError> {
    if !store.acquire_lease(STAGING_LEASE, holder, every).await? {
        return Ok(None);
    }
    let removed = objects.remove_stale_staging(max_age).await?;
    if removed > 0 {
        tracing::warn!(removed, holder, "removed staging objects left by interrupted uploads");
    }
    Ok(Some(removed))
}
