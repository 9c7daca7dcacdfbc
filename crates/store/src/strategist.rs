//! What the strategist reads and writes: the strategies due for execution,
//! a network's graph with its result counts, and the commit of one execution — tasks
//! created, actioned and cancelled and the new StrategyState — in one transaction.
//!
//! The commit re-reads the strategy inside its transaction and refuses (a
//! [`StoreError::Conflict`]) when the strategy or its state changed while the execution
//! ran: upstream overwrites the state and so loses a user's edit made in the meantime;
//! here the edit wins and the execution is discarded (the strategy is due again at once
//! when the edit reset its state).

use std::collections::HashMap;

use alchemiscale_model::status::{StrategyMode, StrategyStatus};
use alchemiscale_model::strategy::{errored_rule, plan, task_count, TaskView};
use alchemiscale_model::{GufeKey, Scope, ScopedKey};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

use crate::db::{bind, dialect, fetch_json_rows, get_i64, get_str, ids_param, in_ids, json_rows_select, Arg};
use crate::error::{Result, StoreError};
use crate::lease::release_in;
use crate::queries::scope_condition;
use crate::strategy::{bind_state, state_from_row, StrategyState, STATE_COLUMNS, UPDATE_STATE};
use crate::tasks::{action_on_hub, cancel_on_hub, insert_tasks, parse_status, NewAction, NewTask};
use crate::{Backend, Store};

/// A strategy due for execution, with what the strategist needs to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct DueStrategy {
    pub network: ScopedKey,
    pub network_id: i64,
    pub strategy: ScopedKey,
    pub strategy_id: i64,
    /// The strategy class's module (its qualname is the key's).
    pub strategy_module: String,
    /// The strategy's keyed dict (CPython JSON text): its settings live here.
    pub strategy_body: String,
    /// The state as read; the commit checks it is still the stored one.
    pub state: StrategyState,
}

/// One transformation of a network: its gufe key and end states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphTransformation {
    pub id: i64,
    pub key: GufeKey,
    /// End states (chemical system row ids); equal for a NonTransformation.
    pub state_a: i64,
    pub state_b: i64,
}

/// A network's graph. Networks never change once stored, so this can be kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrategyGraph {
    /// Chemical system row ids (the network's nodes).
    pub nodes: Vec<i64>,
    /// Ordered by row id.
    pub transformations: Vec<GraphTransformation>,
}

/// A network's graph and result counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrategyInputs {
    pub graph: StrategyGraph,
    /// Successful results by transformation row id (only those with any).
    pub counts: HashMap<i64, i64>,
}

impl StrategyInputs {
    /// Successful results of one transformation.
    pub fn results(&self, transformation: i64) -> i64 {
        self.counts.get(&transformation).copied().unwrap_or(0)
    }

    /// Step 1: successful results over the network's transformations.
    pub fn result_count(&self) -> i64 {
        self.counts.values().sum()
    }
}

/// A successful result of one of a network's transformations, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRef {
    /// The transformation's gufe key.
    pub transformation: String,
    /// The ProtocolDAGResult's gufe key.
    pub obj_key: String,
    /// Object-store path.
    pub location: Option<String>,
    pub content_sha256: Option<String>,
    pub size: Option<i64>,
}

/// How one execution ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StrategyOutcome {
    /// Every weight null (step 5): dormant, and in `full` mode every task actioned on the
    /// hub is cancelled.
    Dormant,
    /// Normalised weights by transformation row id (steps 6–9). Transformations not
    /// listed are left alone.
    Weights(Vec<(i64, Option<f64>)>),
    /// Step 10: `[exception class, message]` and a traceback.
    Failed { exception: (String, String), traceback: String },
}

/// What a committed execution did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionReport {
    pub created: usize,
    pub actioned: usize,
    pub cancelled: usize,
    /// The state written.
    pub state: StrategyState,
}

/// A lease the committing process must still hold (see [`crate::lease`]); the commit
/// gives it up in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct LeaseGuard<'a> {
    pub name: &'a str,
    pub holder: &'a str,
}

/// Upstream stores `last_iteration` with microseconds; so does the state row.
fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

impl Store {
    /// Strategies due for execution at `now`: mode not `disabled`, status
    /// not `error`, and `last_iteration` (or the epoch) at least `max(min_sleep_seconds,
    /// sleep_interval)` ago; dormant ones included. Restricted to networks in `scopes`
    /// (every concrete component equal; none or `*-*-*` = all; upstream's query breaks on
    /// concrete scopes). Networks that are `deleted` or `invalid` are skipped:
    /// their tasks are never claimed, so proposing work for them is pointless. Longest
    /// waiting first.
    pub async fn due_strategies(&self, scopes: &[Scope], min_sleep_seconds: i64, now: DateTime<Utc>) -> Result<Vec<DueStrategy>> {
        let mut args = vec![Arg::I64(min_sleep_seconds), Arg::I64(now.timestamp_micros())];
        let mut conditions = Vec::new();
        for s in scopes {
            conditions.push(format!("({})", scope_condition("o", s, &mut args)));
        }
        // `*-*-*` (the only scope without an org) selects everything
        let scope_filter = if conditions.is_empty() || scopes.iter().any(|s| s.org().is_none()) {
            String::new()
        } else {
            format!(" AND ({})", conditions.join(" OR "))
        };
        let state_columns: Vec<String> = STATE_COLUMNS.split(", ").map(|c| format!("ns.{c}")).collect();
        let sql = dialect(
            self.backend,
            &format!(
                "SELECT n.id, o.gufe_key, o.org, o.campaign, o.project, s.id, s.gufe_key, s.module, s.body, {} \
                 FROM network_strategy ns JOIN network n ON n.id = ns.network_id JOIN gufe_object o ON o.id = n.id \
                 JOIN gufe_object s ON s.id = ns.strategy_id \
                 WHERE ns.mode <> 'disabled' AND ns.status <> 'error' AND n.state IN ('active', 'inactive') \
                 AND COALESCE(ns.last_iteration, 0) + (CASE WHEN ns.sleep_interval > $1 THEN ns.sleep_interval ELSE $1 END) * 1000000 <= $2\
                 {scope_filter} ORDER BY COALESCE(ns.last_iteration, 0), n.id",
                state_columns.join(", ")
            ),
        );
        let rows = bind(sqlx::query(&sql), &args).fetch_all(self.reader()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let scope = Scope::specific(&get_str(r, 2)?, &get_str(r, 3)?, &get_str(r, 4)?)
                .map_err(|e| StoreError::Invalid(format!("corrupt network scope in store: {e}")))?;
            let key = |text: String| -> Result<ScopedKey> {
                let k = GufeKey::new(&text).map_err(|_| StoreError::Invalid(format!("corrupt key {text} in store")))?;
                ScopedKey::new(k, scope.clone()).map_err(|_| StoreError::Invalid(format!("corrupt key {text} in store")))
            };
            out.push(DueStrategy {
                network: key(get_str(r, 1)?)?,
                network_id: get_i64(r, 0)?,
                strategy: key(get_str(r, 6)?)?,
                strategy_id: get_i64(r, 5)?,
                strategy_module: get_str(r, 7)?,
                strategy_body: get_str(r, 8)?,
                state: state_from_row(r, 9)?,
            });
        }
        Ok(out)
    }

    /// A network's graph: its nodes and its transformations with their end states.
    ///
    /// Every read here (and in [`Store::strategy_result_counts`] and the commit's plan)
    /// is driven by a key index: the network's rows, then rows by the ids found, passed as
    /// one JSON array. Joins over whole tables would let PostgreSQL's planner pick
    /// sequential scans whose cost grows with the store, not the network.
    pub async fn strategy_graph(&self, network_id: i64) -> Result<StrategyGraph> {
        let b = self.backend;
        let mut tx = self.begin_snapshot().await?;
        let ids: Vec<(i64,)> = fetch_json_rows(
            &mut tx,
            &dialect(b, &format!("{} FROM network_transformation WHERE network_id = $1", json_rows_select(b, "transformation_id"))),
            &[Arg::I64(network_id)],
        )
        .await?;
        let ids: Vec<i64> = ids.into_iter().map(|(i,)| i).collect();
        let nodes: Vec<(i64,)> = fetch_json_rows(
            &mut tx,
            &dialect(b, &format!("{} FROM network_system WHERE network_id = $1", json_rows_select(b, "system_id"))),
            &[Arg::I64(network_id)],
        )
        .await?;
        let by_ids = |cols: &str, table: &str, id_col: &str| {
            dialect(b, &format!("{} FROM {table} WHERE {}", json_rows_select(b, cols), in_ids(b, id_col, 1)))
        };
        let keys: Vec<(i64, String)> =
            fetch_json_rows(&mut tx, &by_ids("id, gufe_key", "gufe_object", "id"), &[ids_param(b, &ids)]).await?;
        let ends: Vec<(i64, String, i64)> = fetch_json_rows(
            &mut tx,
            &by_ids("transformation_id, attribute, system_id", "transformation_system", "transformation_id"),
            &[ids_param(b, &ids)],
        )
        .await?;
        tx.commit().await?;
        let mut by_id: HashMap<i64, GraphTransformation> = HashMap::with_capacity(keys.len());
        for (id, key) in keys {
            let key = GufeKey::new(&key).map_err(|_| StoreError::Invalid(format!("corrupt key {key} in store")))?;
            by_id.insert(id, GraphTransformation { id, key, state_a: 0, state_b: 0 });
        }
        for (id, attribute, system) in ends {
            let Some(t) = by_id.get_mut(&id) else { continue };
            match attribute.as_str() {
                "stateA" => t.state_a = system,
                "stateB" => t.state_b = system,
                _ => {
                    t.state_a = system;
                    t.state_b = system;
                }
            }
        }
        let mut transformations: Vec<GraphTransformation> = by_id.into_values().collect();
        transformations.sort_by_key(|t| t.id);
        Ok(StrategyGraph { nodes: nodes.into_iter().map(|(n,)| n).collect(), transformations })
    }

    /// The number of successful results (distinct ProtocolDAGResultRefs over all its
    /// tasks) of each of the given transformations that has any, by row id (steps 1
    /// and 3 without downloads): one counter row per transformation, kept by result
    /// recording, so the cost does not grow with tasks or results.
    pub async fn strategy_result_counts(&self, transformations: &[i64]) -> Result<HashMap<i64, i64>> {
        let b = self.backend;
        let sql = dialect(
            b,
            &format!("{} FROM transformation WHERE {} AND ok_results > 0", json_rows_select(b, "id, ok_results"), in_ids(b, "id", 1)),
        );
        let mut conn = self.reader().acquire().await?;
        let counts: Vec<(i64, i64)> = fetch_json_rows(&mut conn, &sql, &[ids_param(b, transformations)]).await?;
        Ok(counts.into_iter().collect())
    }

    /// A network's graph and result counts together.
    pub async fn strategy_inputs(&self, network_id: i64) -> Result<StrategyInputs> {
        let graph = self.strategy_graph(network_id).await?;
        let ids: Vec<i64> = graph.transformations.iter().map(|t| t.id).collect();
        let counts = self.strategy_result_counts(&ids).await?;
        Ok(StrategyInputs { graph, counts })
    }

    /// The successful results of a network's transformations, for strategies that gather
    /// them: per result its transformation's gufe key and where its bytes are.
    pub async fn strategy_result_refs(&self, network_id: i64) -> Result<Vec<ResultRef>> {
        let b = self.backend;
        let sql = dialect(
            b,
            &format!(
                "{} FROM (SELECT DISTINCT o.gufe_key AS tf, p.obj_key AS obj, p.location AS loc, p.content_sha256 AS sha, p.size AS size \
                 FROM network_transformation nt JOIN gufe_object o ON o.id = nt.transformation_id \
                 JOIN task t ON t.transformation_id = nt.transformation_id JOIN task_result tr ON tr.task_id = t.id \
                 JOIN pdrr p ON p.id = tr.pdrr_id WHERE nt.network_id = $1 AND p.ok = 1) r",
                json_rows_select(b, "r.tf, r.obj, r.loc, r.sha, r.size")
            ),
        );
        let mut conn = self.reader().acquire().await?;
        // transformation, object key, location, content hash, size
        type Row = (String, String, Option<String>, Option<String>, Option<i64>);
        let rows: Vec<Row> = fetch_json_rows(&mut conn, &sql, &[Arg::I64(network_id)]).await?;
        let mut out: Vec<ResultRef> = rows
            .into_iter()
            .map(|(transformation, obj_key, location, content_sha256, size)| ResultRef {
                transformation,
                obj_key,
                location,
                content_sha256,
                size,
            })
            .collect();
        out.sort_by(|a, b| (&a.transformation, &a.obj_key).cmp(&(&b.transformation, &b.obj_key)));
        Ok(out)
    }

    /// Commit one execution in one transaction: check that the
    /// strategy and its state are still those of `due` (else [`StoreError::Conflict`],
    /// nothing written) and, if a lease is given, that it is still held; apply `outcome`;
    /// write the new state (`last_iteration` = `now`, `last_iteration_result_count` =
    /// `result_count`, `iterations` + 1). The lease, if given, is given up by the same
    /// transaction.
    pub async fn commit_strategy_execution(
        &self,
        due: &DueStrategy,
        result_count: i64,
        outcome: StrategyOutcome,
        lease: Option<LeaseGuard<'_>>,
        now: DateTime<Utc>,
    ) -> Result<ExecutionReport> {
        // The plan is made on a snapshot read before the write transaction (so the write
        // lock is held only for the writes); the transaction then re-checks what it acts
        // on: the strategy is unchanged, and every task it actions is still waiting or
        // running. A task that completes or is actioned by a user in between at worst
        // shifts one target by a task, which the next execution corrects.
        let planned = match &outcome {
            StrategyOutcome::Weights(weights) => Some(plan_weights(self, due, weights).await?),
            _ => None,
        };
        let mut tx = self.begin_write().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let row = sqlx::query(&format!("SELECT strategy_id, {STATE_COLUMNS} FROM network_strategy WHERE network_id = $1{lock}"))
            .bind(due.network_id)
            .fetch_optional(&mut *tx)
            .await?;
        let unchanged = match &row {
            Some(r) => get_i64(r, 0)? == due.strategy_id && state_from_row(r, 1)? == due.state,
            None => false,
        };
        if !unchanged {
            return Err(StoreError::Conflict(format!(
                "the strategy of network {} was changed or removed while it ran; this execution was discarded",
                due.network
            )));
        }
        if let Some(l) = lease {
            if !release_in(&mut tx, l.name, l.holder, Utc::now()).await? {
                return Err(StoreError::Conflict(format!("lost the lease {} while executing the strategy of {}", l.name, due.network)));
            }
        }
        let mut state = due.state.clone();
        state.last_iteration = Some(to_micros(now));
        state.last_iteration_result_count = result_count;
        state.iterations += 1;
        let mut report = ExecutionReport { created: 0, actioned: 0, cancelled: 0, state: StrategyState::default() };
        match outcome {
            StrategyOutcome::Dormant => {
                state.status = StrategyStatus::Dormant;
                if state.mode == StrategyMode::Full {
                    let rows = sqlx::query("SELECT task_id FROM task_action WHERE network_id = $1")
                        .bind(due.network_id)
                        .fetch_all(&mut *tx)
                        .await?;
                    let ids: Vec<Arg> = rows.iter().map(|r| get_i64(r, 0).map(Arg::I64)).collect::<Result<_>>()?;
                    cancel_on_hub(&mut tx, self.backend, due.network_id, &ids).await?;
                    report.cancelled = ids.len();
                }
            }
            StrategyOutcome::Weights(_) => {
                state.status = StrategyStatus::Awake;
                state.exception = None;
                state.traceback = None;
                let planned = planned.unwrap_or_default();
                let (created, actioned, cancelled) = apply_plan(&mut tx, self.backend, due, planned).await?;
                report.created = created;
                report.actioned = actioned;
                report.cancelled = cancelled;
            }
            StrategyOutcome::Failed { exception, traceback } => {
                state.status = StrategyStatus::Error;
                state.exception = Some(exception);
                state.traceback = Some(traceback);
            }
        }
        bind_state(sqlx::query(UPDATE_STATE), &state)?.bind(due.network_id).execute(&mut *tx).await?;
        tx.commit().await?;
        report.state = state;
        Ok(report)
    }
}

/// What one execution will change on its network's hub.
#[derive(Debug, Default)]
struct Planned {
    action: Vec<i64>,
    /// One entry (the transformation's row id) per task to create.
    create: Vec<i64>,
    cancel: Vec<i64>,
}

/// Steps 6–8 as a plan: per weighed transformation the errored rule, the target
/// count and the tasks to action, create and cancel, from the network's non-final tasks.
async fn plan_weights(store: &Store, due: &DueStrategy, weights: &[(i64, Option<f64>)]) -> Result<Planned> {
    let backend = store.backend;
    let ids: Vec<i64> = weights.iter().map(|w| w.0).collect();
    let mut tx = store.begin_snapshot().await?;
    let tasks: Vec<(i64, i64, String)> = fetch_json_rows(
        &mut tx,
        &dialect(
            backend,
            &format!(
                "{} FROM task WHERE {} AND status IN ('waiting', 'running', 'error')",
                json_rows_select(backend, "id, transformation_id, status"),
                in_ids(backend, "transformation_id", 1)
            ),
        ),
        &[ids_param(backend, &ids)],
    )
    .await?;
    let actioned: Vec<(i64,)> = fetch_json_rows(
        &mut tx,
        &dialect(backend, &format!("{} FROM task_action WHERE network_id = $1", json_rows_select(backend, "task_id"))),
        &[Arg::I64(due.network_id)],
    )
    .await?;
    tx.commit().await?;
    let actioned: std::collections::HashSet<i64> = actioned.into_iter().map(|(i,)| i).collect();
    let mut by_tf: HashMap<i64, Vec<TaskView>> = HashMap::new();
    for (id, tf, status) in tasks {
        by_tf.entry(tf).or_default().push(TaskView { id, status: parse_status(&status)?, actioned: actioned.contains(&id) });
    }
    for views in by_tf.values_mut() {
        views.sort_unstable_by_key(|t| t.id);
    }
    let state = &due.state;
    let mut planned = Planned::default();
    for &(tf, weight) in weights {
        let views = by_tf.get(&tf).map(Vec::as_slice).unwrap_or(&[]);
        let weight = errored_rule(weight, views.iter().map(|t| t.status));
        let target = task_count(weight, state.max_tasks_per_transformation, state.task_scaling);
        let p = plan(target, views, state.mode);
        planned.action.extend(p.action);
        planned.create.extend(std::iter::repeat_n(tf, p.create));
        planned.cancel.extend(p.cancel);
    }
    Ok(planned)
}

/// Apply a plan inside the commit. Returns (created, actioned, cancelled).
async fn apply_plan(conn: &mut AnyConnection, backend: Backend, due: &DueStrategy, planned: Planned) -> Result<(usize, usize, usize)> {
    let hub = due.network_id;
    // tasks to action must still be waiting or running; on PostgreSQL lock them so a
    // concurrent completion cannot remove their ACTIONS before this commit adds one
    let mut actions: Vec<NewAction> = Vec::with_capacity(planned.action.len() + planned.create.len());
    if !planned.action.is_empty() {
        let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = dialect(
            backend,
            &format!(
                "SELECT id, priority, status FROM task WHERE {} AND status IN ('waiting', 'running') ORDER BY id{lock}",
                in_ids(backend, "id", 1)
            ),
        );
        let rows =
            crate::db::bind(sqlx::query(&sql), std::slice::from_ref(&ids_param(backend, &planned.action))).fetch_all(&mut *conn).await?;
        for r in &rows {
            actions.push(NewAction { id: get_i64(r, 0)?, priority: get_i64(r, 1)?, waiting: get_str(r, 2)? == "waiting", weight: 0.5 });
        }
    }
    let new: Vec<NewTask> =
        planned.create.iter().map(|&tf| NewTask { transformation_id: tf, scope: due.network.scope(), extends_id: None }).collect();
    // new tasks have priority 10
    actions.extend(insert_tasks(conn, backend, &new, None).await?.into_iter().map(|(id, _)| NewAction {
        id,
        priority: 10,
        waiting: true,
        weight: 0.5,
    }));
    action_on_hub(conn, backend, hub, &actions).await?;
    let cancel: Vec<Arg> = planned.cancel.iter().map(|&i| Arg::I64(i)).collect();
    cancel_on_hub(conn, backend, hub, &cancel).await?;
    Ok((new.len(), actions.len(), planned.cancel.len()))
}
