//! Tasks: creation, statuses, priorities, actioning,
//! weights and cancelling.
//!
//! Every status change goes through [`apply_status`], which asks
//! `model::status::transition_allowed` and applies `transition_effects`.

use std::collections::HashMap;

use alchemiscale_model::hash::new_task_key;
use alchemiscale_model::status::{transition_allowed, transition_effects};
use alchemiscale_model::{ScopedKey, TaskStatus};
use sqlx::AnyConnection;

use crate::claim_rank::{drop_queue_rows, fresh_ranks, insert_queue_rows, leave_queue, queue_json, requeue, QueueRow};
use crate::db::{
    dialect, execute_in_chunks, fetch_in_chunks, fetch_json_rows, get_i64, get_opt_i64, get_str, json_array, json_id_list, json_ids,
    json_insert, json_rows_select, json_text_list, json_update, Arg, Col,
};
use crate::error::{Result, StoreError};
use crate::networks::object_id;
use crate::{now_micros, Backend, Store};

/// A task as the store sees it.
#[derive(Debug, Clone)]
pub(crate) struct TaskRow {
    pub id: i64,
    pub sk: ScopedKey,
    pub status: TaskStatus,
    pub priority: i64,
    pub extends_id: Option<i64>,
    pub transformation_id: i64,
}

pub(crate) fn parse_status(s: &str) -> Result<TaskStatus> {
    s.parse().map_err(|_| StoreError::Invalid(format!("corrupt task status '{s}' in store")))
}

pub(crate) fn task_sk(gufe_key: &str, org: &str, campaign: &str, project: &str) -> Result<ScopedKey> {
    format!("{gufe_key}-{org}-{campaign}-{project}")
        .parse()
        .map_err(|_| StoreError::Invalid(format!("corrupt task key {gufe_key} in store")))
}

const TASK_COLUMNS: &str = "id, gufe_key, org, campaign, project, status, priority, extends_id, transformation_id";

fn task_row(r: &sqlx::any::AnyRow) -> Result<TaskRow> {
    Ok(TaskRow {
        id: get_i64(r, 0)?,
        sk: task_sk(&get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?, &get_str(r, 4)?)?,
        status: parse_status(&get_str(r, 5)?)?,
        priority: get_i64(r, 6)?,
        extends_id: get_opt_i64(r, 7)?,
        transformation_id: get_i64(r, 8)?,
    })
}

/// Load the tasks among `keys` that exist, by ScopedKey string.
pub(crate) async fn load_tasks(conn: &mut AnyConnection, backend: Backend, keys: &[&ScopedKey]) -> Result<HashMap<String, TaskRow>> {
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    let tokens =
        json_array(keys.iter().filter(|k| k.qualname() == "Task" && seen.insert(k.gufe_key().as_str())).map(|k| k.gufe_key().as_str()));
    let sql = format!("{} FROM task WHERE gufe_key IN ({})", json_rows_select(backend, TASK_COLUMNS), json_text_list(backend, 1));
    type Row = (i64, String, String, String, String, String, i64, Option<i64>, i64);
    let rows: Vec<Row> = fetch_json_rows(conn, &sql, &[Arg::Text(tokens)]).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (id, gufe_key, org, campaign, project, status, priority, extends_id, transformation_id) in rows {
        let sk = task_sk(&gufe_key, &org, &campaign, &project)?;
        let t = TaskRow { id, sk, status: parse_status(&status)?, priority, extends_id, transformation_id };
        out.insert(t.sk.to_string(), t);
    }
    Ok(out)
}

pub(crate) async fn load_task(conn: &mut AnyConnection, sk: &ScopedKey) -> Result<Option<TaskRow>> {
    if sk.qualname() != "Task" {
        return Ok(None);
    }
    let row = crate::db::bind_sk(
        sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM task WHERE gufe_key = $1 AND org = $2 AND campaign = $3 AND project = $4")),
        sk,
    )
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| task_row(&r)).transpose()
}

pub(crate) fn id_args(ids: &[i64]) -> Vec<Arg> {
    ids.iter().map(|&i| Arg::I64(i)).collect()
}

/// Apply `to` to the given tasks (id, current status) under the transition table, with
/// its side effects and, for `invalid`/`deleted`, the cascade to descendants. Returns,
/// per input, whether the transition was allowed (re-applying the current status is).
///
/// Deliberate deviations from upstream: the cascade uses the same
/// transition table (so a `deleted` descendant never becomes `invalid`), and removes the
/// descendants' ACTIONS, APPLIES and claims on every hub.
///
/// With a `cause`, every task whose status changes (the cascade included) gets a row in
/// `task_status_log` ([`StatusCause`]); claims and results, which keep records of their
/// own, pass none.
pub(crate) async fn apply_status(
    conn: &mut AnyConnection,
    backend: Backend,
    tasks: &[(i64, TaskStatus)],
    to: TaskStatus,
    cause: Option<StatusCause>,
) -> Result<Vec<bool>> {
    let allowed: Vec<bool> = tasks.iter().map(|(_, from)| transition_allowed(*from, to)).collect();
    let mut ids: Vec<i64> = tasks.iter().zip(&allowed).filter(|(_, a)| **a).map(|((id, _), _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(allowed);
    }
    let mut changed: Vec<(i64, TaskStatus)> = tasks.iter().zip(&allowed).filter(|(t, a)| **a && t.1 != to).map(|(t, _)| *t).collect();
    let effects = transition_effects(to);
    if effects.cascade_to_descendants {
        let rows = fetch_in_chunks(
            conn,
            backend,
            "WITH RECURSIVE d(id) AS (SELECT id FROM task WHERE extends_id IN ({}) \
             UNION SELECT t.id FROM task t JOIN d ON t.extends_id = d.id) \
             SELECT task.id, task.status FROM task JOIN d ON d.id = task.id",
            &[],
            &id_args(&ids),
        )
        .await?;
        for r in &rows {
            let (id, status) = (get_i64(r, 0)?, parse_status(&get_str(r, 1)?)?);
            if transition_allowed(status, to) {
                ids.push(id);
                if status != to {
                    changed.push((id, status));
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
    }
    if let Some(cause) = cause {
        log_status_changes(conn, backend, &changed, to, cause).await?;
    }
    let args = id_args(&ids);
    execute_in_chunks(conn, backend, "UPDATE task SET status = $1 WHERE id IN ({})", &[Arg::from(to.as_str())], &args).await?;
    if effects.drop_claim {
        end_claims(conn, backend, "task_id", &args).await?;
    }
    if effects.drop_actions {
        drop_queue_rows(conn, backend, &args, None).await?;
        execute_in_chunks(conn, backend, "DELETE FROM task_action WHERE task_id IN ({})", &[], &args).await?;
    } else if to != TaskStatus::Waiting {
        // the claim queue holds the rows of waiting tasks only (see `claim_rank`)
        leave_queue(conn, backend, &args).await?;
    }
    if effects.drop_applies {
        execute_in_chunks(conn, backend, "DELETE FROM restart_applies WHERE task_id IN ({})", &[], &args).await?;
    }
    if to == TaskStatus::Waiting {
        // back in the race for claims, with fresh clocks (see `claim_rank`)
        requeue(conn, backend, &ids, None).await?;
    }
    Ok(allowed)
}

/// Why a task's status changed, as `task_status_log` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCause {
    /// A user set it (through the API or the console), or the cascade of such a change.
    User,
    /// A network's restart patterns put an errored task back to waiting.
    Restart,
    /// The service holding the claim gave it back, or deregistered.
    Released,
    /// The registration of the service holding the claim expired.
    Expired,
}

impl StatusCause {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCause::User => "user",
            StatusCause::Restart => "restart",
            StatusCause::Released => "released",
            StatusCause::Expired => "expired",
        }
    }
}

async fn log_status_changes(
    conn: &mut AnyConnection,
    backend: Backend,
    changed: &[(i64, TaskStatus)],
    to: TaskStatus,
    cause: StatusCause,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let now = now_micros();
    let rows: Vec<Vec<Arg>> = changed
        .iter()
        .filter(|(id, _)| seen.insert(*id))
        .map(|(id, from)| vec![Arg::I64(*id), Arg::I64(now), Arg::from(from.as_str()), Arg::from(to.as_str()), Arg::from(cause.as_str())])
        .collect();
    let head = "INSERT INTO task_status_log (task_id, changed, previous, status, cause)";
    crate::db::insert_rows(conn, backend, head, "ON CONFLICT DO NOTHING", 5, &rows).await?;
    Ok(())
}

/// Delete the claims whose `column` (`task_id` or `service_id`) is one of `ids`, first
/// copying them into the claim log, which outlives them: results are accepted from any
/// service that ever claimed the task ([`Store::check_result_submitter`] reads the log and
/// the live claims). Logged when it ends rather than when it starts, a claim costs the
/// claim transaction no write beyond its own row.
pub(crate) async fn end_claims(conn: &mut AnyConnection, backend: Backend, column: &str, ids: &[Arg]) -> Result<()> {
    execute_in_chunks(
        conn,
        backend,
        &format!(
            "INSERT INTO task_claim_log (task_id, service_identifier, claimed) \
             SELECT c.task_id, s.identifier, c.claimed FROM task_claim c JOIN compute_service s ON s.id = c.service_id \
             WHERE c.{column} IN ({{}}) ON CONFLICT DO NOTHING"
        ),
        &[],
        ids,
    )
    .await?;
    execute_in_chunks(conn, backend, &format!("DELETE FROM task_claim WHERE {column} IN ({{}})"), &[], ids).await?;
    Ok(())
}

/// Network row id for a network ScopedKey (None if missing or not a network).
pub(crate) async fn network_row_id(conn: &mut AnyConnection, sk: &ScopedKey) -> Result<Option<i64>> {
    if sk.qualname() != "AlchemicalNetwork" {
        return Ok(None);
    }
    let Some(id) = object_id(conn, sk).await? else { return Ok(None) };
    let row = sqlx::query("SELECT id FROM network WHERE id = $1").bind(id).fetch_optional(&mut *conn).await?;
    Ok(row.map(|_| id))
}

/// A task to create: its transformation (row id, scope) and the task it extends.
pub(crate) struct NewTask<'a> {
    pub transformation_id: i64,
    pub scope: &'a alchemiscale_model::Scope,
    pub extends_id: Option<i64>,
}

/// Insert `waiting` tasks of priority 10 with fresh keys, inside the caller's write
/// transaction; their (row id, key) in input order.
pub(crate) async fn insert_tasks(
    conn: &mut AnyConnection,
    backend: Backend,
    new: &[NewTask<'_>],
    creator: Option<&str>,
) -> Result<Vec<(i64, ScopedKey)>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_micros();
    let mut keys = Vec::with_capacity(new.len());
    let mut rows = Vec::with_capacity(new.len());
    for t in new {
        let key = ScopedKey::new(new_task_key(), t.scope.clone()).map_err(|e| StoreError::Invalid(format!("cannot key a task: {e}")))?;
        rows.push(serde_json::json!([
            key.gufe_key().as_str(),
            key.org(),
            key.campaign(),
            key.project(),
            t.transformation_id,
            t.extends_id,
            creator,
            now
        ]));
        keys.push(key);
    }
    let sql = dialect(
        backend,
        &json_insert(
            backend,
            "task (gufe_key, org, campaign, project, transformation_id, extends_id, creator, datetime_created)",
            &[Col::Text, Col::Text, Col::Text, Col::Text, Col::Int, Col::Int, Col::Text, Col::Int],
            "RETURNING id, gufe_key",
        ),
    );
    let returned = sqlx::query(&sql).bind(serde_json::Value::Array(rows).to_string()).fetch_all(&mut *conn).await?;
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(returned.len());
    for r in &returned {
        ids.insert(get_str(r, 1)?, get_i64(r, 0)?);
    }
    keys.into_iter()
        .map(|k| {
            let id = ids.get(k.gufe_key().as_str()).copied().ok_or_else(|| StoreError::Invalid(format!("task {k} was not inserted")))?;
            Ok((id, k))
        })
        .collect()
}

/// A task about to be actioned on a hub.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewAction {
    pub(crate) id: i64,
    pub(crate) priority: i64,
    pub(crate) waiting: bool,
    /// The ACTIONS weight (0.5 unless the caller gives one).
    pub(crate) weight: f64,
}

/// Action tasks that are not yet actioned on `hub`, inside the caller's write
/// transaction: ACTIONS rows of their weights, in the claim queue with fresh claim ranks
/// if their task is waiting and their weight above 0 (see `claim_rank`), and the hub's
/// restart patterns start applying to them.
pub(crate) async fn action_on_hub(conn: &mut AnyConnection, backend: Backend, hub: i64, tasks: &[NewAction]) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    // the queue rows, whose keys their ACTIONS rows record (see `claim_rank`)
    let queued: Vec<&NewAction> = tasks.iter().filter(|t| t.waiting && t.weight > 0.0).collect();
    let draws: Vec<(i64, f64)> = queued.iter().map(|t| (t.priority, t.weight)).collect();
    let ranks = fresh_ranks(conn, backend, hub, &draws).await?;
    let queue: Vec<QueueRow> = queued.iter().zip(ranks).map(|(t, rank)| (hub, t.priority, rank, t.id)).collect();
    let keys: HashMap<i64, (i64, f64)> = queue.iter().map(|&(_, priority, rank, id)| (id, (priority, rank))).collect();
    let rows: Vec<serde_json::Value> = tasks
        .iter()
        .map(|t| match keys.get(&t.id) {
            Some(&(priority, rank)) => serde_json::json!([hub, t.id, t.weight, priority, rank]),
            None => serde_json::json!([hub, t.id, t.weight, null, null]),
        })
        .collect();
    let sql = dialect(
        backend,
        &json_insert(
            backend,
            "task_action (network_id, task_id, weight, queue_priority, claim_rank)",
            &[Col::Int, Col::Int, Col::Real, Col::Int, Col::Real],
            "ON CONFLICT DO NOTHING",
        ),
    );
    sqlx::query(&sql).bind(serde_json::Value::Array(rows).to_string()).execute(&mut *conn).await?;
    insert_queue_rows(conn, backend, queue_json(queue)).await?;
    let ids: Vec<i64> = tasks.iter().map(|t| t.id).collect();
    let patterns = sqlx::query("SELECT 1 FROM restart_pattern WHERE network_id = $1 LIMIT 1").bind(hub).fetch_optional(&mut *conn).await?;
    if patterns.is_some() {
        let sql = dialect(
            backend,
            &format!(
                "INSERT INTO restart_applies (pattern_id, task_id, num_retries) SELECT rp.id, t.id, 0 FROM restart_pattern rp, task t \
                 WHERE rp.network_id = $1 AND t.id IN ({}) ON CONFLICT DO NOTHING",
                json_id_list(backend, 2)
            ),
        );
        sqlx::query(&sql).bind(hub).bind(json_ids(&ids)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// One request of a bulk task creation.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub transformation: ScopedKey,
    pub extends: Option<ScopedKey>,
}

impl Store {
    /// Create one task per request, all or nothing. Each task is placed in
    /// its own transformation's scope (upstream puts all of them in the last one's, Q4) and
    /// keys are returned in input order.
    pub async fn create_tasks(&self, requests: &[TaskRequest], creator: Option<&str>) -> Result<Vec<ScopedKey>> {
        for r in requests {
            let q = r.transformation.qualname();
            if q != "Transformation" && q != "NonTransformation" {
                return Err(StoreError::Invalid(format!("Got an unsupported `Transformation` type: {q}")));
            }
            if let Some(e) = &r.extends {
                if e.qualname() != "Task" {
                    return Err(StoreError::Invalid(format!("`extends` ScopedKey ({e}) does not correspond to a `Task`")));
                }
            }
        }
        let mut tx = self.begin_write().await?;
        let mut tf_ids: HashMap<String, i64> = HashMap::new();
        for r in requests {
            let key = r.transformation.to_string();
            if tf_ids.contains_key(&key) {
                continue;
            }
            let id = object_id(&mut tx, &r.transformation).await?;
            let id = match id {
                Some(id)
                    if sqlx::query("SELECT id FROM transformation WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?.is_some() =>
                {
                    id
                }
                _ => return Err(StoreError::Invalid(format!("no such Transformation: {key}"))),
            };
            tf_ids.insert(key, id);
        }
        let extends_keys: Vec<&ScopedKey> = requests.iter().filter_map(|r| r.extends.as_ref()).collect();
        let extended = load_tasks(&mut tx, self.backend, &extends_keys).await?;
        let mut new = Vec::with_capacity(requests.len());
        for r in requests {
            let tf_id = tf_ids[&r.transformation.to_string()];
            let extends_id = match &r.extends {
                None => None,
                Some(e) => {
                    let t = extended.get(&e.to_string()).ok_or_else(|| StoreError::Invalid(format!("no such Task to extend: {e}")))?;
                    if t.status.is_terminal() {
                        return Err(StoreError::Invalid(format!("Cannot extend a `deleted` or `invalid` Task: {e}")));
                    }
                    if t.transformation_id != tf_id {
                        return Err(StoreError::Invalid(format!("{e} extends a Transformation other than {}", r.transformation)));
                    }
                    Some(t.id)
                }
            };
            new.push(NewTask { transformation_id: tf_id, scope: r.transformation.scope(), extends_id });
        }
        let keys = insert_tasks(&mut tx, self.backend, &new, creator).await?;
        tx.commit().await?;
        self.note_bulk_change(keys.len() as u64);
        Ok(keys.into_iter().map(|(_, k)| k).collect())
    }

    /// Status per input (None for unknown tasks or `None` inputs).
    pub async fn get_task_status(&self, tasks: &[Option<ScopedKey>]) -> Result<Vec<Option<TaskStatus>>> {
        let mut conn = self.reader().acquire().await?;
        let keys: Vec<&ScopedKey> = tasks.iter().flatten().collect();
        let found = load_tasks(&mut conn, self.backend, &keys).await?;
        Ok(tasks.iter().map(|k| k.as_ref().and_then(|k| found.get(&k.to_string())).map(|t| t.status)).collect())
    }

    /// Set `status` on the given tasks; per input the key if the
    /// transition was allowed (re-application included), else None. With `raise`, the
    /// first disallowed transition aborts everything.
    pub async fn set_task_status(&self, tasks: &[Option<ScopedKey>], status: TaskStatus, raise: bool) -> Result<Vec<Option<ScopedKey>>> {
        let mut tx = self.begin_write().await?;
        let keys: Vec<&ScopedKey> = tasks.iter().flatten().collect();
        let found = load_tasks(&mut tx, self.backend, &keys).await?;
        let present: Vec<(i64, TaskStatus)> =
            tasks.iter().flatten().filter_map(|k| found.get(&k.to_string())).map(|t| (t.id, t.status)).collect();
        if raise {
            for t in tasks.iter().flatten().filter_map(|k| found.get(&k.to_string())) {
                if !transition_allowed(t.status, status) {
                    return Err(StoreError::Invalid(format!("Cannot set task {} with current status {} to `{}`", t.sk, t.status, status)));
                }
            }
        }
        apply_status(&mut tx, self.backend, &present, status, Some(StatusCause::User)).await?;
        tx.commit().await?;
        Ok(tasks
            .iter()
            .map(|k| {
                let t = found.get(&k.as_ref()?.to_string())?;
                transition_allowed(t.status, status).then(|| t.sk.clone())
            })
            .collect())
    }

    /// Priority per input (None for unknown tasks).
    pub async fn get_task_priority(&self, tasks: &[Option<ScopedKey>]) -> Result<Vec<Option<i64>>> {
        let mut conn = self.reader().acquire().await?;
        let keys: Vec<&ScopedKey> = tasks.iter().flatten().collect();
        let found = load_tasks(&mut conn, self.backend, &keys).await?;
        Ok(tasks.iter().map(|k| k.as_ref().and_then(|k| found.get(&k.to_string())).map(|t| t.priority)).collect())
    }

    /// Set the priority (1 ≤ p ≤ 2^63−1); per input the key if the task exists.
    pub async fn set_task_priority(&self, tasks: &[Option<ScopedKey>], priority: i64) -> Result<Vec<Option<ScopedKey>>> {
        if priority < 1 {
            return Err(StoreError::Invalid("priority must be between 1 and 2**63 - 1, inclusive".into()));
        }
        let mut tx = self.begin_write().await?;
        let keys: Vec<&ScopedKey> = tasks.iter().flatten().collect();
        let found = load_tasks(&mut tx, self.backend, &keys).await?;
        let ids: Vec<Arg> = found.values().map(|t| Arg::I64(t.id)).collect();
        execute_in_chunks(&mut tx, self.backend, "UPDATE task SET priority = $1 WHERE id IN ({})", &[Arg::I64(priority)], &ids).await?;
        // the tasks' ACTIONS rows join their new priority group (see `claim_rank`)
        let task_ids: Vec<i64> = found.values().map(|t| t.id).collect();
        requeue(&mut tx, self.backend, &task_ids, None).await?;
        tx.commit().await?;
        // a raised priority may place tasks before where claims start reading
        crate::claim_select::forget_start_hints(self);
        Ok(tasks.iter().map(|k| k.as_ref().and_then(|k| found.get(&k.to_string())).map(|t| t.sk.clone())).collect())
    }

    /// The Transformation a task performs.
    pub async fn get_task_transformation(&self, task: &ScopedKey) -> Result<ScopedKey> {
        let mut conn = self.reader().acquire().await?;
        let t = load_task(&mut conn, task).await?.ok_or(StoreError::NotFound)?;
        crate::queries::object_sk(&mut conn, t.transformation_id).await
    }

    /// Action tasks on a network's TaskHub: a task is actioned if it
    /// exists, performs one of the network's transformations and is waiting, running or
    /// in error. New ACTIONS get weight 0.5 and the hub's restart patterns start applying.
    ///
    /// Per input, the key if the task is actioned on the hub after the call — newly or
    /// already (upstream answers null for already-actioned tasks, Q7, though its docs call
    /// the operation idempotent) — else None.
    pub async fn action_tasks(
        &self,
        network: &ScopedKey,
        tasks: &[Option<ScopedKey>],
        weights: Option<Weights>,
    ) -> Result<Vec<Option<ScopedKey>>> {
        if let Some(w) = &weights {
            w.validate(tasks.len())?;
        }
        let mut tx = self.begin_write().await?;
        let Some(hub) = network_row_id(&mut tx, network).await? else {
            return Ok(vec![None; tasks.len()]);
        };
        let tf_rows =
            sqlx::query("SELECT transformation_id FROM network_transformation WHERE network_id = $1").bind(hub).fetch_all(&mut *tx).await?;
        let tfs: std::collections::HashSet<i64> = tf_rows.iter().map(|r| get_i64(r, 0)).collect::<Result<_>>()?;
        // in slices, so what one request holds at a time stays bounded however many tasks
        // it lists (one transaction all the same)
        let mut result: Vec<Option<ScopedKey>> = Vec::with_capacity(tasks.len());
        let mut added = 0;
        for (c, chunk) in tasks.chunks(ACTION_SLICE).enumerate() {
            let keys: Vec<&ScopedKey> = chunk.iter().flatten().collect();
            let found = load_tasks(&mut tx, self.backend, &keys).await?;
            let eligible: Vec<&TaskRow> = found
                .values()
                .filter(|t| {
                    tfs.contains(&t.transformation_id) && matches!(t.status, TaskStatus::Waiting | TaskStatus::Running | TaskStatus::Error)
                })
                .collect();
            let already = actioned_on(&mut tx, self.backend, hub, eligible.iter().map(|t| t.id)).await?;
            // the weight given to each listed task (the last one given for it, as upstream
            // sets them one after another)
            let given: HashMap<i64, f64> = match &weights {
                None => HashMap::new(),
                Some(w) => chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| Some((found.get(&k.as_ref()?.to_string())?.id, w.at(c * ACTION_SLICE + i))))
                    .collect(),
            };
            let new: Vec<NewAction> = eligible
                .iter()
                .filter(|t| !already.contains(&t.id))
                .map(|t| NewAction {
                    id: t.id,
                    priority: t.priority,
                    waiting: t.status == TaskStatus::Waiting,
                    weight: given.get(&t.id).copied().unwrap_or(0.5),
                })
                .collect();
            action_on_hub(&mut tx, self.backend, hub, &new).await?;
            added += new.len() as u64;
            let actioned: std::collections::HashSet<i64> = eligible.iter().map(|t| t.id).collect();
            result.extend(chunk.iter().map(|k| {
                let t = found.get(&k.as_ref()?.to_string())?;
                actioned.contains(&t.id).then(|| t.sk.clone())
            }));
            // rows that were there already take the given weights and are drawn afresh
            let fresh: std::collections::HashSet<i64> = new.iter().map(|t| t.id).collect();
            let mut reweighted: Vec<(i64, f64)> = given.into_iter().filter(|(id, _)| !fresh.contains(id)).collect();
            reweighted.sort_by_key(|r| r.0);
            set_action_weights(&mut tx, self.backend, hub, &reweighted).await?;
        }
        tx.commit().await?;
        self.note_bulk_change(added);
        if added > 0 {
            // tasks of a more urgent priority may enter before where claims start reading
            crate::claim_select::forget_start_hints(self);
        }
        Ok(result)
    }

    /// Remove tasks from a network's hub (and that hub's restart-pattern counters); per
    /// input the key if it was actioned there. Statuses and claims are untouched.
    pub async fn cancel_tasks(&self, network: &ScopedKey, tasks: &[Option<ScopedKey>]) -> Result<Vec<Option<ScopedKey>>> {
        let mut tx = self.begin_write().await?;
        let Some(hub) = network_row_id(&mut tx, network).await? else {
            return Ok(vec![None; tasks.len()]);
        };
        let keys: Vec<&ScopedKey> = tasks.iter().flatten().collect();
        let found = load_tasks(&mut tx, self.backend, &keys).await?;
        let was = actioned_on(&mut tx, self.backend, hub, found.values().map(|t| t.id)).await?;
        let was_args: Vec<Arg> = was.iter().map(|&i| Arg::I64(i)).collect();
        cancel_on_hub(&mut tx, self.backend, hub, &was_args).await?;
        tx.commit().await?;
        Ok(tasks
            .iter()
            .map(|k| {
                let t = found.get(&k.as_ref()?.to_string())?;
                was.contains(&t.id).then(|| t.sk.clone())
            })
            .collect())
    }
}

/// Tasks an action request handles at a time (inside its one transaction).
const ACTION_SLICE: usize = 20_000;

/// Which of the given task ids are actioned on `hub`.
async fn actioned_on(
    conn: &mut AnyConnection,
    backend: Backend,
    hub: i64,
    task_ids: impl Iterator<Item = i64>,
) -> Result<std::collections::HashSet<i64>> {
    let ids: Vec<Arg> = task_ids.map(Arg::I64).collect();
    let rows =
        fetch_in_chunks(conn, backend, "SELECT task_id FROM task_action WHERE network_id = $1 AND task_id IN ({})", &[Arg::I64(hub)], &ids)
            .await?;
    rows.iter().map(|r| get_i64(r, 0)).collect()
}

/// Remove ACTIONS from `hub` and the APPLIES of `hub`'s patterns for the given task ids.
pub(crate) async fn cancel_on_hub(conn: &mut AnyConnection, backend: Backend, hub: i64, task_ids: &[Arg]) -> Result<()> {
    drop_queue_rows(conn, backend, task_ids, Some(hub)).await?;
    execute_in_chunks(conn, backend, "DELETE FROM task_action WHERE network_id = $1 AND task_id IN ({})", &[Arg::I64(hub)], task_ids)
        .await?;
    execute_in_chunks(
        conn,
        backend,
        "DELETE FROM restart_applies WHERE pattern_id IN (SELECT id FROM restart_pattern WHERE network_id = $1) AND task_id IN ({})",
        &[Arg::I64(hub)],
        task_ids,
    )
    .await?;
    Ok(())
}

/// Weights given when actioning tasks.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// One weight for every listed task.
    All(f64),
    /// One weight per listed task.
    Each(Vec<f64>),
}

impl Weights {
    /// The weight of the `i`th listed task.
    fn at(&self, i: usize) -> f64 {
        match self {
            Weights::All(w) => *w,
            Weights::Each(ws) => ws[i],
        }
    }

    fn validate(&self, n: usize) -> Result<()> {
        match self {
            Weights::All(w) if !(0.0..=1.0).contains(w) => Err(StoreError::Invalid("weight must be between 0 and 1 (inclusive)".into())),
            Weights::Each(ws) if ws.len() != n => {
                Err(StoreError::Invalid("weight (when in a list) must have the same length as tasks".into()))
            }
            Weights::Each(ws) if ws.iter().any(|w| !(0.0..=1.0).contains(w)) => {
                Err(StoreError::Invalid("weights must be between 0 and 1 (inclusive)".into()))
            }
            _ => Ok(()),
        }
    }
}

/// Give ACTIONS rows of `hub` new weights, (task id, weight) each, and draw their queue
/// rows afresh (new weights, new clocks; see `claim_rank`). Tasks not actioned on the
/// hub are left alone.
async fn set_action_weights(conn: &mut AnyConnection, backend: Backend, hub: i64, weights: &[(i64, f64)]) -> Result<()> {
    if weights.is_empty() {
        return Ok(());
    }
    // the hub in every row, so that both backends look each row up by its key rather than
    // read the hub's ACTIONS rows for each (SQLite's plan, with the hub as a parameter)
    let rows: Vec<serde_json::Value> = weights.iter().map(|&(id, w)| serde_json::json!([hub, id, w])).collect();
    let sql =
        json_update(backend, "task_action", &[("weight", 2, Col::Real)], &[("network_id", 0, Col::Int), ("task_id", 1, Col::Int)], "");
    sqlx::query(&dialect(backend, &sql)).bind(serde_json::Value::Array(rows).to_string()).execute(&mut *conn).await?;
    let ids: Vec<i64> = weights.iter().map(|w| w.0).collect();
    requeue(conn, backend, &ids, Some(hub)).await
}
