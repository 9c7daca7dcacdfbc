//! The overview's figures (task counts per scope, the networks, activity, compute
//! services), counted at most every `figures_max_age` per set of visible scopes.
//!
//! Counting the tasks of every scope reads one index entry per task, and listing the
//! networks with their results reads every transformation: hundreds of milliseconds at a
//! million tasks. A count is reused for ten times as long as it took (at least a second,
//! at most `figures_max_age`). When a reused count expires, a quick one (under 100 ms) is
//! simply made again; a slow one is shown once more while the next is counted in the
//! background (stale while revalidating), so only the very first visit of a set of scopes
//! waits for a slow count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alchemiscale_model::Scope;
use alchemiscale_store::console::{Activity, NetworkSummary, ScopeFigures};
use alchemiscale_store::{Result, Store};

/// Hours of activity the overview charts.
pub const ACTIVITY_HOURS: usize = 24;

/// Networks listed on the overview.
pub const NETWORKS_LISTED: i64 = 500;

#[derive(Debug)]
pub struct Figures {
    pub scopes: Vec<ScopeFigures>,
    /// At most [`NETWORKS_LISTED`].
    pub networks: Vec<NetworkSummary>,
    pub activity: Activity,
    pub services: i64,
    /// When they were counted (µs since the epoch).
    pub counted_at: i64,
    at: Instant,
    took: Duration,
}

/// Counts quicker than this are made again in the request rather than served stale.
const QUICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Entry {
    figures: Option<Arc<Figures>>,
    refreshing: bool,
}

#[derive(Clone)]
pub struct FiguresCache {
    max_age: Duration,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

async fn count(store: &Store, filter: Option<&[Scope]>) -> Result<Figures> {
    let scopes = filter.map(<[Scope]>::to_vec).unwrap_or_else(|| vec![Scope::all()]);
    let now = alchemiscale_store::now_micros();
    let start = Instant::now();
    let mut figures = Figures {
        scopes: store.console_scope_figures(&scopes).await?,
        networks: store.console_networks(&scopes, NETWORKS_LISTED).await?,
        activity: store.console_activity(filter, ACTIVITY_HOURS, now).await?,
        services: store.console_services_alive().await?,
        counted_at: now,
        at: start,
        took: Duration::ZERO,
    };
    figures.took = start.elapsed();
    Ok(figures)
}

impl FiguresCache {
    pub fn new(max_age: Duration) -> FiguresCache {
        FiguresCache { max_age, entries: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The figures for a scope filter (None: everything).
    pub async fn get(&self, store: &Store, filter: Option<Vec<Scope>>) -> Result<Arc<Figures>> {
        let key = match &filter {
            None => "*".to_string(),
            Some(scopes) => scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        };
        let stale = {
            let mut entries = self.entries.lock().expect("figures lock");
            if entries.len() > 1000 {
                entries.clear();
            }
            let entry = entries.entry(key.clone()).or_default();
            match &entry.figures {
                Some(f) if f.at.elapsed() < (f.took * 10).clamp(Duration::from_secs(1), self.max_age.max(Duration::from_secs(1))) => {
                    return Ok(f.clone())
                }
                Some(f) if f.took < QUICK => None,
                Some(f) if !entry.refreshing => {
                    entry.refreshing = true;
                    Some(f.clone())
                }
                Some(f) => return Ok(f.clone()),
                None => None,
            }
        };
        match stale {
            Some(figures) => {
                let (this, store) = (self.clone(), store.clone());
                tokio::spawn(async move {
                    let counted = count(&store, filter.as_deref()).await;
                    let mut entries = this.entries.lock().expect("figures lock");
                    let entry = entries.entry(key).or_default();
                    entry.refreshing = false;
                    match counted {
                        Ok(f) => entry.figures = Some(Arc::new(f)),
                        Err(e) => tracing::warn!(error = %e, "console: counting the overview's figures failed"),
                    }
                });
                Ok(figures)
            }
            None => {
                let figures = Arc::new(count(store, filter.as_deref()).await?);
                self.entries.lock().expect("figures lock").entry(key).or_default().figures = Some(figures.clone());
                Ok(figures)
            }
        }
    }
}
