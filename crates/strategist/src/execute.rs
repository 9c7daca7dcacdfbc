//! One execution of one network's strategy.
//!
//! 1. Take the network's lease, so no other strategist process runs it meanwhile.
//! 2. Count its successful results; a dormant strategy whose count has not changed stops
//!    here and nothing is written.
//! 3. Ask the strategy for weights: natively (graph and result counts from the store) or
//!    in Python (the gathered results too).
//! 4. Normalise them; all null means dormant.
//! 5. Commit, in one store transaction: the errored-transformation rule, task counts, the
//!    tasks created, actioned and cancelled, and the new state. Any failure of the
//!    strategy lands in the state instead (status `error`, exception and traceback).
//!
//! Failures of the stores themselves (a database restart, an unreachable object store)
//! are not the strategy's fault: they are logged, nothing is recorded and the strategy
//! is tried again in a later cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alchemiscale_compute::StopHandle;
use alchemiscale_model::strategy::normalise;
use alchemiscale_objects::Objects;
use alchemiscale_store::strategist::{DueStrategy, ExecutionReport, LeaseGuard, StrategyGraph, StrategyOutcome};
use alchemiscale_store::{Store, StoreError};

use crate::cache::ResultCache;
use crate::graph::{Edge, Graph};
use crate::native::NativeStrategy;
use crate::python::{propose, ProposeError, PythonConfig};
use crate::StrategyError;

/// How long a native execution may hold a network's lease (renewed at commit).
const NATIVE_LEASE: Duration = Duration::from_secs(300);

/// What an execution needs besides the strategy.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub objects: Option<Objects>,
    pub python: Option<PythonConfig>,
    pub cache: Option<ResultCache>,
    /// This process's name in leases.
    pub holder: Arc<str>,
    pub graphs: GraphCache,
}

/// Networks never change once stored, so their graphs are read once and kept, up to
/// [`GraphCache::MAX_TRANSFORMATIONS`] transformations in all (then the cache starts
/// over); each cycle reads only the result counts.
#[derive(Clone, Default)]
pub struct GraphCache(Arc<Mutex<Graphs>>);

/// The graphs by network row id, and how many transformations they hold in all.
type Graphs = (HashMap<i64, Arc<StrategyGraph>>, usize);

impl GraphCache {
    /// About 100 MB of graphs.
    pub const MAX_TRANSFORMATIONS: usize = 1_000_000;

    async fn get(&self, store: &Store, network_id: i64) -> Result<Arc<StrategyGraph>, StoreError> {
        if let Some(g) = self.0.lock().expect("graph cache lock").0.get(&network_id) {
            return Ok(g.clone());
        }
        let graph = Arc::new(store.strategy_graph(network_id).await?);
        let mut cache = self.0.lock().expect("graph cache lock");
        if cache.1 + graph.transformations.len() > Self::MAX_TRANSFORMATIONS {
            *cache = (HashMap::new(), 0);
        }
        cache.1 += graph.transformations.len();
        cache.0.insert(network_id, graph.clone());
        Ok(graph)
    }
}

/// How an execution ended.
#[derive(Debug)]
pub enum Ended {
    /// Committed: what it did, the weights it used, and where the time went.
    Committed { report: ExecutionReport, weights: WeightsSummary, phases: Phases },
    /// A dormant strategy with no new results: nothing to do, nothing written.
    StillDormant,
    /// Another strategist process holds the network.
    Busy,
    /// The strategy changed (or the lease was lost) while it ran; nothing written.
    Discarded(String),
    /// The stores failed or the strategist is stopping; nothing written, tried again later.
    Skipped(String),
}

/// Milliseconds spent reading the network and its result counts, asking the strategy,
/// and committing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    pub read_ms: f64,
    pub weigh_ms: f64,
    pub commit_ms: f64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// For the log line of an execution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightsSummary {
    pub weighed: usize,
    pub null: usize,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl WeightsSummary {
    fn of(weights: &[(i64, Option<f64>)]) -> WeightsSummary {
        let values: Vec<f64> = weights.iter().filter_map(|w| w.1).collect();
        WeightsSummary {
            weighed: values.len(),
            null: weights.len() - values.len(),
            min: values.iter().copied().reduce(f64::min),
            max: values.iter().copied().reduce(f64::max),
        }
    }
}

/// The result of one execution, for logging.
#[derive(Debug)]
pub struct Execution {
    pub network: String,
    pub ended: Ended,
    pub duration: Duration,
}

/// The lease a network's executions take (see `alchemiscale_store` leases).
pub fn lease_name(network_id: i64) -> String {
    format!("strategy:{network_id}")
}

/// The graph strategies work on (node indices by system row id) and each edge's number
/// of successful results.
pub fn graph_of(network: &StrategyGraph, counts: &HashMap<i64, i64>) -> (Graph, Vec<u64>) {
    let mut index: HashMap<i64, usize> = HashMap::with_capacity(network.nodes.len());
    for &n in &network.nodes {
        let next = index.len();
        index.entry(n).or_insert(next);
    }
    let mut node = |id: i64| {
        let next = index.len();
        *index.entry(id).or_insert(next)
    };
    let edges: Vec<Edge> = network.transformations.iter().map(|t| Edge { a: node(t.state_a), b: node(t.state_b) }).collect();
    let results = network.transformations.iter().map(|t| counts.get(&t.id).copied().unwrap_or(0).max(0) as u64).collect();
    (Graph { nodes: index.len(), edges }, results)
}

/// What went wrong, where: a traceback for strategies that have no Python one.
fn native_traceback(due: &DueStrategy, step: &str, e: &StrategyError) -> String {
    format!(
        "Traceback (alchemiscale-rs strategist):\n  network {}\n  strategy {} ({}.{})\n  while {step}\n{}: {}\n",
        due.network,
        due.strategy,
        due.strategy_module,
        due.strategy.qualname(),
        e.class,
        e.message
    )
}

impl Context {
    fn native(&self, due: &DueStrategy) -> Option<Result<NativeStrategy, StrategyError>> {
        let body = match alchemiscale_model::json::parse(&due.strategy_body) {
            Ok(v) => v,
            Err(e) => return Some(Err(StrategyError::new("ValueError", format!("the stored strategy is not valid JSON: {e}")))),
        };
        NativeStrategy::from_dict(due.strategy.qualname(), &due.strategy_module, &body)
    }

    /// Run one execution; never fails (see [`Ended`]).
    pub async fn execute(&self, due: &DueStrategy, stop: &StopHandle) -> Execution {
        let started = Instant::now();
        let native = self.native(due);
        let ttl = match (&native, &self.python) {
            (None, Some(p)) => p.timeout + Duration::from_secs(60),
            _ => NATIVE_LEASE,
        };
        let lease_name = lease_name(due.network_id);
        let ended = match self.store.acquire_lease(&lease_name, &self.holder, ttl).await {
            Ok(false) => Ended::Busy,
            Err(e) => Ended::Skipped(format!("cannot take the network's lease: {e}")),
            Ok(true) => {
                let lease = LeaseGuard { name: &lease_name, holder: &self.holder };
                let ended = self.execute_held(due, native, lease, stop).await;
                // a commit gives the lease up itself
                if !matches!(ended, Ended::Committed { .. }) {
                    if let Err(e) = self.store.release_lease(&lease_name, &self.holder).await {
                        tracing::warn!(network = %due.network, error = %e, "cannot release the network's lease (it runs out by itself)");
                    }
                }
                ended
            }
        };
        Execution { network: due.network.to_string(), ended, duration: started.elapsed() }
    }

    async fn execute_held(
        &self,
        due: &DueStrategy,
        native: Option<Result<NativeStrategy, StrategyError>>,
        lease: LeaseGuard<'_>,
        stop: &StopHandle,
    ) -> Ended {
        let skipped = |what: &str, e: &dyn std::fmt::Display| Ended::Skipped(format!("{what}: {e}"));
        let mut phases = Phases::default();
        let t = Instant::now();
        let graph = match self.graphs.get(&self.store, due.network_id).await {
            Ok(graph) => graph,
            Err(e) => return skipped("cannot read the network", &e),
        };
        // steps 1–2: the dormant short-cut needs only the count
        let ids: Vec<i64> = graph.transformations.iter().map(|t| t.id).collect();
        let counts = match self.store.strategy_result_counts(&ids).await {
            Ok(c) => c,
            Err(e) => return skipped("cannot count the network's results", &e),
        };
        let count: i64 = counts.values().sum();
        if due.state.status == alchemiscale_model::status::StrategyStatus::Dormant && count == due.state.last_iteration_result_count {
            return Ended::StillDormant;
        }

        phases.read_ms = ms(t);
        let t = Instant::now();
        let (outcome, summary) = match self.weights(due, native, &graph, &counts, stop).await {
            Ok(w) => {
                let summary = WeightsSummary::of(&w);
                (if w.iter().all(|w| w.1.is_none()) { StrategyOutcome::Dormant } else { StrategyOutcome::Weights(w) }, summary)
            }
            Err(ProposeError::Transient(why)) => return Ended::Skipped(why),
            Err(ProposeError::Strategy(e)) => (failed(due, "asking the strategy for weights", e), WeightsSummary::default()),
        };
        phases.weigh_ms = ms(t);
        let t = Instant::now();
        match self.store.commit_strategy_execution(due, count, outcome, Some(lease), chrono::Utc::now()).await {
            Ok(report) => {
                phases.commit_ms = ms(t);
                Ended::Committed { report, weights: summary, phases }
            }
            Err(StoreError::Conflict(why)) => Ended::Discarded(why),
            Err(e) => Ended::Skipped(format!("cannot commit the execution: {e}")),
        }
    }

    /// Steps 3–4: normalised weights per transformation row id.
    async fn weights(
        &self,
        due: &DueStrategy,
        native: Option<Result<NativeStrategy, StrategyError>>,
        network: &StrategyGraph,
        counts: &HashMap<i64, i64>,
        stop: &StopHandle,
    ) -> Result<Vec<(i64, Option<f64>)>, ProposeError> {
        let mut weights: Vec<(i64, Option<f64>)> = match native {
            Some(strategy) => {
                let strategy = strategy?;
                let (graph, results) = graph_of(network, counts);
                network.transformations.iter().map(|t| t.id).zip(strategy.weights(&graph, &results)).collect()
            }
            None => {
                let Some(python) = &self.python else {
                    return Err(StrategyError::new(
                        "NotImplementedError",
                        format!(
                            "strategy class {}.{} has no native implementation and no Python interpreter is configured for the \
                             strategist (set `python` in its settings)",
                            due.strategy_module,
                            due.strategy.qualname()
                        ),
                    )
                    .into());
                };
                let raw = propose(python, &self.store, self.objects.as_ref(), self.cache.as_ref(), due, stop).await?;
                let ids: HashMap<&str, i64> = network.transformations.iter().map(|t| (t.key.as_str(), t.id)).collect();
                let mut out = Vec::with_capacity(raw.len());
                for (key, w) in raw {
                    let id = ids.get(key.as_str()).ok_or_else(|| {
                        StrategyError::new(
                            "KeyError",
                            format!("the strategy weighed {key}, which is not a transformation of network {}", due.network),
                        )
                    })?;
                    out.push((*id, w));
                }
                out
            }
        };
        let keys: HashMap<i64, &str> = network.transformations.iter().map(|t| (t.id, t.key.as_str())).collect();
        normalise(weights.iter_mut().map(|(id, w)| (keys.get(id).copied().unwrap_or(""), w)))
            .map_err(|e| StrategyError::new(e.exception_class(), e.to_string()))?;
        Ok(weights)
    }
}

fn failed(due: &DueStrategy, step: &str, e: StrategyError) -> StrategyOutcome {
    let traceback = e.traceback.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| native_traceback(due, step, &e));
    StrategyOutcome::Failed { exception: (e.class, e.message), traceback }
}
