//! What the strategist reads and writes (model.md §9): the strategies due for execution,
//! a network's graph with its result counts, and the commit of one execution — tasks
//! created, actioned and cancelled and the new StrategyState — in one transaction.
//!
//! The commit re-reads the strategy inside its transaction and refuses (a
//! [`StoreError::Conflict`]) when the strategy or its state changed while the execution
//! ran: upstream overwrites the state and so loses a user's edit made in the meantime;
//! here the edit wins and the execution is discarded (the strategy is due again at once
//! when the edit reset its state).

use std::collections::HashMap;
use std::time::Duration;

use alchemiscale_model::status::{StrategyMode, StrategyStatus};
use alchemiscale_model::strategy::{errored_rule, plan, task_count, TaskView};
use alchemiscale_model::{GufeKey, Scope, ScopedKey};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

use crate::db::{
    bind, dialect, fetch_json_rows, get_i64, get_str, json_array, json_ids, json_id_list, json_rows_select,
    json_text_list, Arg,
};
use crate::error::{Result, StoreError};
use crate::lease::hold_in;
use crate::queries::scope_condition;
use crate::strategy::{bind_state, state_from_row, StrategyState, STATE_COLUMNS, UPDATE_STATE};
use crate::tasks::{action_on_hub, cancel_on_hub, insert_tasks, parse_status, NewTask};
use crate::{Backend, Store};

/// A strategy due for execution (model.md §9.1), with what the strategist needs to run it.
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

/// One transformation of a network, as strategies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformationInput {
    pub id: i64,
    pub key: GufeKey,
    /// End states (chemical system row ids); equal for a NonTransformation.
    pub state_a: i64,
    pub state_b: i64,
    /// Successful results (distinct ProtocolDAGResultRefs over all its tasks).
    pub results: i64,
}

/// A network's graph and result counts (model.md §9.2 steps 1 and 3 without downloads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrategyInputs {
    /// Chemical system row ids (the network's nodes).
    pub nodes: Vec<i64>,
    /// Ordered by row id.
    pub transformations: Vec<TransformationInput>,
}

impl StrategyInputs {
    /// §9.2 step 1: successful results over the network's transformations.
    pub fn result_count(&self) -> i64 {
        self.transformations.iter().map(|t| t.results).sum()
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

/// How one execution ended (model.md §9.2).
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

/// A lease the committing process must still hold (see [`crate::lease`]); it is
/// extended by `ttl` in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct LeaseGuard<'a> {
    pub name: &'a str,
    pub holder: &'a str,
    pub ttl: Duration,
}

/// Upstream stores `last_iteration` with microseconds; so does the state row.
fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

impl Store {
    /// Strategies due for execution at `now` (model.md §9.1): mode not `disabled`, status
    /// not `error`, and `last_iteration` (or the epoch) at least `max(min_sleep_seconds,
    /// sleep_interval)` ago; dormant ones included. Restricted to networks in `scopes`
    /// (every concrete component equal; none or `*-*-*` = all; upstream's query breaks on
    /// concrete scopes, §14 Q10). Networks that are `deleted` or `invalid` are skipped:
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

    /// A network's graph (nodes, transformations with their end states) and the number of
    /// successful results of each transformation, read in one snapshot.
    pub async fn strategy_inputs(&self, network_id: i64) -> Result<StrategyInputs> {
        let mut tx = self.begin_snapshot().await?;
        let b = self.backend;
        let nodes: Vec<(i64,)> = fetch_json_rows(
            &mut tx,
            &dialect(b, &format!("{} FROM network_system WHERE network_id = $1", json_rows_select(b, "system_id"))),
            &[Arg::I64(network_id)],
        )
        .await?;
        let ends: Vec<(i64, String, String, i64)> = fetch_json_rows(
            &mut tx,
            &dialect(
                b,
                &format!(
                    "{} FROM network_transformation nt JOIN gufe_object o ON o.id = nt.transformation_id \
                     JOIN transformation_system ts ON ts.transformation_id = nt.transformation_id WHERE nt.network_id = $1",
                    json_rows_select(b, "nt.transformation_id, o.gufe_key, ts.attribute, ts.system_id")
                ),
            ),
            &[Arg::I64(network_id)],
        )
        .await?;
        let counts: Vec<(i64, i64)> = fetch_json_rows(
            &mut tx,
            &dialect(
                b,
                &format!(
                    "{} FROM (SELECT t.transformation_id AS tf, COUNT(DISTINCT tr.pdrr_id) AS n FROM network_transformation nt \
                     JOIN task t ON t.transformation_id = nt.transformation_id JOIN task_result tr ON tr.task_id = t.id \
                     JOIN pdrr p ON p.id = tr.pdrr_id WHERE nt.network_id = $1 AND p.ok = 1 GROUP BY t.transformation_id) c",
                    json_rows_select(b, "c.tf, c.n")
                ),
            ),
            &[Arg::I64(network_id)],
        )
        .await?;
        tx.commit().await?;
        let counts: HashMap<i64, i64> = counts.into_iter().collect();
        let mut by_id: HashMap<i64, TransformationInput> = HashMap::new();
        for (id, key, attribute, system) in ends {
            let t = match by_id.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(TransformationInput {
                    id,
                    key: GufeKey::new(&key).map_err(|_| StoreError::Invalid(format!("corrupt key {key} in store")))?,
                    state_a: system,
                    state_b: system,
                    results: counts.get(&id).copied().unwrap_or(0),
                }),
            };
            match attribute.as_str() {
                "stateA" => t.state_a = system,
                "stateB" => t.state_b = system,
                _ => {}
            }
        }
        let mut transformations: Vec<TransformationInput> = by_id.into_values().collect();
        transformations.sort_by_key(|t| t.id);
        Ok(StrategyInputs { nodes: nodes.into_iter().map(|(n,)| n).collect(), transformations })
    }

    /// §9.2 step 1 alone (a dormant strategy's short-cut): successful results over the
    /// network's transformations.
    pub async fn strategy_result_count(&self, network_id: i64) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT tr.pdrr_id) FROM network_transformation nt JOIN task t ON t.transformation_id = nt.transformation_id \
             JOIN task_result tr ON tr.task_id = t.id JOIN pdrr p ON p.id = tr.pdrr_id WHERE nt.network_id = $1 AND p.ok = 1",
        )
        .bind(network_id)
        .fetch_one(self.reader())
        .await?;
        get_i64(&row, 0)
    }

    /// The successful results of a network's transformations, for strategies that gather
    /// them (§9.2 step 3): per result its transformation's gufe key and where its bytes are.
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
        let rows: Vec<(String, String, Option<String>, Option<String>, Option<i64>)> =
            fetch_json_rows(&mut conn, &sql, &[Arg::I64(network_id)]).await?;
        let mut out: Vec<ResultRef> = rows
            .into_iter()
            .map(|(transformation, obj_key, location, content_sha256, size)| ResultRef { transformation, obj_key, location, content_sha256, size })
            .collect();
        out.sort_by(|a, b| (&a.transformation, &a.obj_key).cmp(&(&b.transformation, &b.obj_key)));
        Ok(out)
    }

    /// Commit one execution (model.md §9.2 steps 5–10) in one transaction: check that the
    /// strategy and its state are still those of `due` (else [`StoreError::Conflict`],
    /// nothing written) and, if a lease is given, that it is still held; apply `outcome`;
    /// write the new state (`last_iteration` = `now`, `last_iteration_result_count` =
    /// `result_count`, `iterations` + 1).
    pub async fn commit_strategy_execution(
        &self,
        due: &DueStrategy,
        result_count: i64,
        outcome: StrategyOutcome,
        lease: Option<LeaseGuard<'_>>,
        now: DateTime<Utc>,
    ) -> Result<ExecutionReport> {
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
            if !hold_in(&mut tx, l.name, l.holder, l.ttl, now).await? {
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
                    let rows = sqlx::query("SELECT task_id FROM task_action WHERE network_id = $1").bind(due.network_id).fetch_all(&mut *tx).await?;
                    let ids: Vec<Arg> = rows.iter().map(|r| get_i64(r, 0).map(Arg::I64)).collect::<Result<_>>()?;
                    cancel_on_hub(&mut tx, self.backend, due.network_id, &ids).await?;
                    report.cancelled = ids.len();
                }
            }
            StrategyOutcome::Weights(weights) => {
                state.status = StrategyStatus::Awake;
                state.exception = None;
                state.traceback = None;
                let (created, actioned, cancelled) = apply_weights(&mut tx, self.backend, due, &state, &weights).await?;
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

/// §9.2 steps 6–8 inside the commit: per weighed transformation, the errored rule, the
/// target count and the plan, applied. Returns (created, actioned, cancelled).
async fn apply_weights(
    conn: &mut AnyConnection,
    backend: Backend,
    due: &DueStrategy,
    state: &StrategyState,
    weights: &[(i64, Option<f64>)],
) -> Result<(usize, usize, usize)> {
    let hub = due.network_id;
    // the non-final tasks of the network's transformations, and whether each is actioned here
    let rows: Vec<(i64, i64, String, i64, i64)> = fetch_json_rows(
        conn,
        &dialect(
            backend,
            &format!(
                "{} FROM network_transformation nt JOIN task t ON t.transformation_id = nt.transformation_id \
                 LEFT JOIN task_action a ON a.network_id = nt.network_id AND a.task_id = t.id \
                 WHERE nt.network_id = $1 AND t.status IN ('waiting', 'running', 'error')",
                json_rows_select(backend, "t.id, t.transformation_id, t.status, CASE WHEN a.task_id IS NULL THEN 0 ELSE 1 END, t.priority")
            ),
        ),
        &[Arg::I64(hub)],
    )
    .await?;
    let mut priority: HashMap<i64, i64> = HashMap::with_capacity(rows.len());
    let mut by_tf: HashMap<i64, Vec<TaskView>> = HashMap::new();
    for (id, tf, status, actioned, p) in rows {
        priority.insert(id, p);
        by_tf.entry(tf).or_default().push(TaskView { id, status: parse_status(&status)?, actioned: actioned == 1 });
    }
    for views in by_tf.values_mut() {
        views.sort_unstable_by_key(|t| t.id);
    }
    let mut to_action: Vec<i64> = Vec::new();
    let mut to_create: Vec<NewTask> = Vec::new();
    let mut to_cancel: Vec<i64> = Vec::new();
    for &(tf, weight) in weights {
        let views = by_tf.get(&tf).map(Vec::as_slice).unwrap_or(&[]);
        let weight = errored_rule(weight, views.iter().map(|t| t.status));
        let target = task_count(weight, state.max_tasks_per_transformation, state.task_scaling);
        let p = plan(target, views, state.mode);
        to_action.extend(p.action);
        to_create.extend((0..p.create).map(|_| NewTask { transformation_id: tf, scope: due.network.scope(), extends_id: None }));
        to_cancel.extend(p.cancel);
    }
    // tasks to action must still be waiting or running; on PostgreSQL lock them so a
    // concurrent completion cannot remove their ACTIONS before this commit adds one
    let mut actions: Vec<(i64, i64)> = Vec::with_capacity(to_action.len() + to_create.len());
    if !to_action.is_empty() {
        let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = dialect(
            backend,
            &format!(
                "SELECT id, priority FROM task WHERE id IN ({}) AND status IN ('waiting', 'running') ORDER BY id{lock}",
                json_id_list(backend, 1)
            ),
        );
        let rows = sqlx::query(&sql).bind(json_ids(&to_action)).fetch_all(&mut *conn).await?;
        for r in &rows {
            actions.push((get_i64(r, 0)?, get_i64(r, 1)?));
        }
    }
    if !to_create.is_empty() {
        let keys = insert_tasks(conn, backend, &to_create, None).await?;
        let sql = dialect(backend, &format!("SELECT id, priority FROM task WHERE gufe_key IN ({})", json_text_list(backend, 1)));
        let rows = sqlx::query(&sql).bind(json_array(keys.iter().map(|k| k.gufe_key().as_str()))).fetch_all(&mut *conn).await?;
        for r in &rows {
            actions.push((get_i64(r, 0)?, get_i64(r, 1)?));
        }
    }
    action_on_hub(conn, backend, hub, &actions).await?;
    let cancel: Vec<Arg> = to_cancel.iter().map(|&i| Arg::I64(i)).collect();
    cancel_on_hub(conn, backend, hub, &cancel).await?;
    Ok((to_create.len(), actions.len(), to_cancel.len()))
}
