//! The overview's figures: one census of every scope, counted in the background and kept
//! for a few seconds; each session's overview picks its own scopes out of it.
//!
//! Counting the tasks of every scope reads every task row (no index holds the status, so
//! that claims stay cheap), and listing the networks with their results reads every
//! transformation: up to a second at a million tasks. So the console counts everything
//! once, per concrete scope, and a session's figures are a filter over that census (a few
//! hundred rows), whatever its scopes.
//!
//! The census is first counted when the console starts, in the background. A quick one
//! (under 50 ms, or under 50,000 tasks) is made again for every request (concurrent
//! requests share one count). A slow one is reused for ten times as long as it took (at
//! most `figures_max_age`); then it is shown once more while the next is counted in the
//! background (stale while revalidating). Only a request that arrives before the first
//! census is done, or the first after the store grew past a quick count, waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alchemiscale_model::scope::authorised;
use alchemiscale_model::Scope;
use alchemiscale_store::console::{Activity, NetworkSummary, ScopeFigures};
use alchemiscale_store::{Result, Store};

/// Hours of activity the overview charts.
pub const ACTIVITY_HOURS: usize = 24;

/// Networks listed on one overview.
pub const NETWORKS_LISTED: usize = 500;

/// Networks the census keeps (by scope, then name); an overview lists the first
/// [`NETWORKS_LISTED`] of its scopes among them.
const NETWORKS_KEPT: i64 = 100_000;

/// A census is kept only if it took at least this long and counted at least
/// [`KEPT_FROM_TASKS`] tasks; others are made again in each request, so a small store's
/// overview is always current (a count slowed by a cold start or a busy machine included).
const QUICK: Duration = Duration::from_millis(50);
const KEPT_FROM_TASKS: i64 = 50_000;

/// Everything the overview shows, for every concrete scope.
#[derive(Debug)]
struct Census {
    scopes: Vec<ScopeFigures>,
    networks: Vec<NetworkSummary>,
    activity: Vec<(Scope, Activity)>,
    services: i64,
    counted_at: i64,
    at: Instant,
    took: Duration,
}

impl Census {
    /// Whether it is worth keeping (see [`QUICK`]).
    fn slow(&self) -> bool {
        let tasks: i64 = self.scopes.iter().flat_map(|s| s.tasks.values()).sum();
        self.took >= QUICK && tasks >= KEPT_FROM_TASKS
    }
}

/// One session's overview figures.
#[derive(Debug)]
pub struct Figures {
    pub scopes: Vec<ScopeFigures>,
    /// At most [`NETWORKS_LISTED`].
    pub networks: Vec<NetworkSummary>,
    pub activity: Activity,
    pub services: i64,
    /// When they were counted (µs since the epoch).
    pub counted_at: i64,
}

async fn count(store: &Store) -> Result<Census> {
    let all = [Scope::all()];
    let now = alchemiscale_store::now_micros();
    let start = Instant::now();
    let mut census = Census {
        scopes: store.console_scope_figures(&all).await?,
        networks: store.console_networks(&all, NETWORKS_KEPT).await?,
        activity: store.console_activity_by_scope(ACTIVITY_HOURS, now).await?,
        services: store.console_services_alive().await?,
        counted_at: now,
        at: start,
        took: Duration::ZERO,
    };
    census.took = start.elapsed();
    Ok(census)
}

impl Census {
    /// The figures of the scopes in `filter` (None: everything, as an admin sees it).
    fn figures(&self, filter: Option<&[Scope]>) -> Figures {
        let visible = |scope: &Scope| filter.is_none_or(|f| authorised(scope, f));
        let hours = self.activity.first().map_or(ACTIVITY_HOURS, |(_, a)| a.claims.len());
        let start = self.activity.first().map_or(0, |(_, a)| a.start);
        let mut activity = Activity { start, claims: vec![0; hours], results_ok: vec![0; hours], results_failed: vec![0; hours] };
        for (_, a) in self.activity.iter().filter(|(s, _)| visible(s)) {
            activity.add(a);
        }
        Figures {
            scopes: self.scopes.iter().filter(|s| visible(&s.scope)).cloned().collect(),
            networks: self.networks.iter().filter(|n| visible(n.key.scope())).take(NETWORKS_LISTED).cloned().collect(),
            activity,
            services: self.services,
            counted_at: self.counted_at,
        }
    }
}

#[derive(Clone)]
pub struct FiguresCache {
    max_age: Duration,
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    census: Mutex<Option<Arc<Census>>>,
    refreshing: AtomicBool,
    /// Held while counting, so concurrent requests share one count.
    counting: tokio::sync::Mutex<()>,
}

impl FiguresCache {
    pub fn new(max_age: Duration) -> FiguresCache {
        FiguresCache { max_age, inner: Arc::default() }
    }

    /// Counts the first census in the background (when the console starts).
    pub fn warm(&self, store: Store) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.count_now(&store).await {
                tracing::warn!(error = %e, "console: counting the overview's figures failed");
            }
        });
    }

    /// The figures for a scope filter (None: everything).
    pub async fn get(&self, store: &Store, filter: Option<Vec<Scope>>) -> Result<Figures> {
        Ok(self.census(store).await?.figures(filter.as_deref()))
    }

    async fn census(&self, store: &Store) -> Result<Arc<Census>> {
        let current = self.inner.census.lock().expect("figures lock").clone();
        if let Some(c) = current.filter(|c| c.slow()) {
            // expired: shown once more while the next is counted in the background
            let expired = c.at.elapsed() >= (c.took * 10).min(self.max_age);
            if expired && !self.inner.refreshing.swap(true, Ordering::AcqRel) {
                let (this, store) = (self.clone(), store.clone());
                tokio::spawn(async move {
                    if let Err(e) = this.count_now(&store).await {
                        tracing::warn!(error = %e, "console: counting the overview's figures failed");
                    }
                    this.inner.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(c);
        }
        self.count_now(store).await
    }

    /// A census counted after this call began: made here, or by whoever was counting.
    async fn count_now(&self, store: &Store) -> Result<Arc<Census>> {
        let asked = Instant::now();
        let _counting = self.inner.counting.lock().await;
        if let Some(c) = self.inner.census.lock().expect("figures lock").clone().filter(|c| c.at >= asked) {
            return Ok(c);
        }
        let census = Arc::new(count(store).await?);
        *self.inner.census.lock().expect("figures lock") = Some(census.clone());
        Ok(census)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(claims: i64, ok: i64) -> Activity {
        Activity { start: 7, claims: vec![0, claims], results_ok: vec![ok, 0], results_failed: vec![0, 1] }
    }

    fn summary(scope: &str, name: &str) -> NetworkSummary {
        let key = format!("AlchemicalNetwork-{}-{scope}", "a".repeat(32)).parse().unwrap();
        NetworkSummary { key, name: Some(name.into()), state: "active".into(), weight: 0.5, transformations: 1, ok_results: 0 }
    }

    #[test]
    fn a_session_sees_the_census_of_its_scopes_only() {
        let s = |t: &str| t.parse::<Scope>().unwrap();
        let figures = |scope: &str, waiting: i64| ScopeFigures {
            scope: s(scope),
            networks: [("active".to_string(), 1)].into(),
            tasks: [("waiting".to_string(), waiting)].into(),
        };
        let census = Census {
            scopes: vec![figures("a-x-p", 3), figures("a-y-p", 4), figures("b-x-p", 5)],
            networks: vec![summary("a-x-p", "n1"), summary("a-y-p", "n2"), summary("b-x-p", "n3")],
            activity: vec![(s("a-x-p"), activity(10, 1)), (s("a-y-p"), activity(20, 2)), (s("b-x-p"), activity(40, 4))],
            services: 2,
            counted_at: 99,
            at: Instant::now(),
            took: Duration::ZERO,
        };
        let mine = census.figures(Some(&[s("a-*-*")]));
        assert_eq!(mine.scopes.iter().map(|f| f.scope.to_string()).collect::<Vec<_>>(), ["a-x-p", "a-y-p"]);
        assert_eq!(mine.networks.iter().map(|n| n.name.clone().unwrap()).collect::<Vec<_>>(), ["n1", "n2"]);
        assert_eq!(mine.activity.claims, [0, 30]);
        assert_eq!(mine.activity.results_ok, [3, 0]);
        assert_eq!(mine.activity.results_failed, [0, 2]);
        assert_eq!((mine.activity.start, mine.services, mine.counted_at), (7, 2, 99));

        let one = census.figures(Some(&[s("b-x-p"), s("a-y-p")]));
        assert_eq!(one.activity.claims, [0, 60]);
        assert_eq!(one.scopes.len(), 2);
        let none = census.figures(Some(&[s("c-*-*")]));
        assert!(none.scopes.is_empty() && none.networks.is_empty() && none.activity.claims == [0, 0]);
        let admin = census.figures(None);
        assert_eq!((admin.scopes.len(), admin.networks.len(), admin.activity.claims[1]), (3, 3, 70));
    }

    #[test]
    fn only_a_slow_count_of_a_large_store_is_kept() {
        let census = |took_ms: u64, waiting: i64| Census {
            scopes: vec![ScopeFigures {
                scope: "a-b-c".parse().unwrap(),
                networks: Default::default(),
                tasks: [("waiting".to_string(), waiting)].into(),
            }],
            networks: vec![],
            activity: vec![],
            services: 0,
            counted_at: 0,
            at: Instant::now(),
            took: Duration::from_millis(took_ms),
        };
        assert!(census(900, 1_000_000).slow());
        assert!(!census(900, 1_000).slow(), "a small store slowed by a busy machine is counted afresh");
        assert!(!census(10, 1_000_000).slow(), "a quick count is made again");
    }
}
