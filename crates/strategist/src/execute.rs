//! One execution of one network's strategy (model.md §9.2).
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use alchemiscale_compute::StopHandle;
use alchemiscale_model::strategy::normalise;
use alchemiscale_objects::Objects;
use alchemiscale_store::strategist::{DueStrategy, ExecutionReport, LeaseGuard, StrategyInputs, StrategyOutcome};
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
}

/// How an execution ended.
#[derive(Debug)]
pub enum Ended {
    /// Committed: what it did and the weights it used.
    Committed { report: ExecutionReport, weights: WeightsSummary },
    /// A dormant strategy with no new results: nothing to do, nothing written.
    StillDormant,
    /// Another strategist process holds the network.
    Busy,
    /// The strategy changed (or the lease was lost) while it ran; nothing written.
    Discarded(String),
    /// The stores failed or the strategist is stopping; nothing written, tried again later.
    Skipped(String),
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

/// The graph of `inputs` (node indices by system row id).
pub fn graph_of(inputs: &StrategyInputs) -> (Graph, Vec<u64>) {
    let mut index: HashMap<i64, usize> = HashMap::with_capacity(inputs.nodes.len());
    for &n in &inputs.nodes {
        let next = index.len();
        index.entry(n).or_insert(next);
    }
    let mut node = |id: i64| {
        let next = index.len();
        *index.entry(id).or_insert(next)
    };
    let edges: Vec<Edge> = inputs.transformations.iter().map(|t| Edge { a: node(t.state_a), b: node(t.state_b) }).collect();
    let results = inputs.transformations.iter().map(|t| t.results.max(0) as u64).collect();
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
        let lease_name = format!("strategy:{}", due.network_id);
        let ended = match self.store.acquire_lease(&lease_name, &self.holder, ttl).await {
            Ok(false) => Ended::Busy,
            Err(e) => Ended::Skipped(format!("cannot take the network's lease: {e}")),
            Ok(true) => {
                let lease = LeaseGuard { name: &lease_name, holder: &self.holder, ttl: Duration::from_secs(1) };
                let ended = self.execute_held(due, native, lease, stop).await;
                if let Err(e) = self.store.release_lease(&lease_name, &self.holder).await {
                    tracing::warn!(network = %due.network, error = %e, "cannot release the network's lease (it runs out by itself)");
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
        // §9.2 steps 1–2: the dormant short-cut needs only the count
        let count = match self.store.strategy_result_count(due.network_id).await {
            Ok(n) => n,
            Err(e) => return skipped("cannot count the network's results", &e),
        };
        if due.state.status == alchemiscale_model::status::StrategyStatus::Dormant && count == due.state.last_iteration_result_count {
            return Ended::StillDormant;
        }
        let inputs = match self.store.strategy_inputs(due.network_id).await {
            Ok(i) => i,
            Err(e) => return skipped("cannot read the network", &e),
        };
        let count = inputs.result_count();
        let weights = match self.weights(due, native, &inputs, stop).await {
            Ok(w) => w,
            Err(ProposeError::Transient(why)) => return Ended::Skipped(why),
            Err(ProposeError::Strategy(e)) => return self.commit(due, count, failed(due, "asking the strategy for weights", e), lease).await,
        };
        let summary = WeightsSummary::of(&weights);
        let outcome = if weights.iter().all(|w| w.1.is_none()) { StrategyOutcome::Dormant } else { StrategyOutcome::Weights(weights) };
        match self.commit(due, count, outcome, lease).await {
            Ended::Committed { report, .. } => Ended::Committed { report, weights: summary },
            other => other,
        }
    }

    /// §9.2 steps 3–4: normalised weights per transformation row id.
    async fn weights(
        &self,
        due: &DueStrategy,
        native: Option<Result<NativeStrategy, StrategyError>>,
        inputs: &StrategyInputs,
        stop: &StopHandle,
    ) -> Result<Vec<(i64, Option<f64>)>, ProposeError> {
        let mut weights: Vec<(i64, Option<f64>)> = match native {
            Some(strategy) => {
                let strategy = strategy?;
                let (graph, results) = graph_of(inputs);
                inputs.transformations.iter().map(|t| t.id).zip(strategy.weights(&graph, &results)).collect()
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
                let ids: HashMap<&str, i64> = inputs.transformations.iter().map(|t| (t.key.as_str(), t.id)).collect();
                let mut out = Vec::with_capacity(raw.len());
                for (key, w) in raw {
                    let id = ids.get(key.as_str()).ok_or_else(|| {
                        StrategyError::new("KeyError", format!("the strategy weighed {key}, which is not a transformation of network {}", due.network))
                    })?;
                    out.push((*id, w));
                }
                out
            }
        };
        let keys: HashMap<i64, &str> = inputs.transformations.iter().map(|t| (t.id, t.key.as_str())).collect();
        normalise(weights.iter_mut().map(|(id, w)| (keys.get(id).copied().unwrap_or(""), w)))
            .map_err(|e| StrategyError::new(e.exception_class(), e.to_string()))?;
        Ok(weights)
    }

    async fn commit(&self, due: &DueStrategy, count: i64, outcome: StrategyOutcome, lease: LeaseGuard<'_>) -> Ended {
        match self.store.commit_strategy_execution(due, count, outcome, Some(lease), chrono::Utc::now()).await {
            Ok(report) => Ended::Committed { report, weights: WeightsSummary::default() },
            Err(StoreError::Conflict(why)) => Ended::Discarded(why),
            Err(e) => Ended::Skipped(format!("cannot commit the execution: {e}")),
        }
    }
}

fn failed(due: &DueStrategy, step: &str, e: StrategyError) -> StrategyOutcome {
    let traceback = e.traceback.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| native_traceback(due, step, &e));
    StrategyOutcome::Failed { exception: (e.class, e.message), traceback }
}
