//! Results: the state-store half of recording a
//! ProtocolDAGResult — its reference (PDRR), tracebacks, status change, the submitting
//! service's failure log and restart resolution, all in one transaction (upstream runs
//! these as separate steps) — and the result queries.
//!
//! The caller (the compute API) has already decoded the result and written its bytes to
//! the object store; [`RecordedResult`] says where they went.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use alchemiscale_model::hash::{python_isoformat, PdrrFields, TracebacksFields};
use alchemiscale_model::{GufeKey, ScopedKey, TaskStatus};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use crate::db::{get_i64, get_opt_i64, get_opt_str, get_str};
use crate::error::{Result, StoreError};
use crate::networks::object_id;
use crate::restart::resolve_restarts;
use crate::tasks::{apply_status, load_task, StatusCause};
use crate::{Backend, Store};

/// A result whose bytes are in the object store, to be recorded against a task.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedResult {
    /// The ProtocolDAGResult's gufe key.
    pub obj_key: String,
    /// Success (`ProtocolDAGResult.ok()`) or failure.
    pub ok: bool,
    /// Object-store path relative to the store prefix.
    pub location: String,
    /// SHA-256 (hex) of the stored bytes.
    pub content_sha256: String,
    /// Size of the stored bytes.
    pub size: i64,
    /// The submitting compute service's id.
    pub creator: Option<String>,
    /// For failures: the failed units' tracebacks (None or empty lists: nothing to record).
    pub tracebacks: Option<TracebacksFields>,
}

/// A stored ProtocolDAGResultRef with the port's integrity columns.
#[derive(Debug, Clone, PartialEq)]
pub struct PdrrRecord {
    pub scoped_key: ScopedKey,
    pub obj_key: String,
    pub location: Option<String>,
    pub ok: bool,
    /// Python isoformat text, exactly as hashed into the key.
    pub datetime_created: Option<String>,
    pub creator: Option<String>,
    pub content_sha256: Option<String>,
    pub size: Option<i64>,
}

impl PdrrRecord {
    /// The PDRR's gufe fields (its keyed dict and key derive from these).
    pub fn fields(&self) -> PdrrFields {
        PdrrFields {
            location: self.location.clone(),
            obj_key: self.obj_key.clone(),
            scope: self.scoped_key.scope().to_string(),
            ok: self.ok,
            datetime_created: self.datetime_created.clone(),
            creator: self.creator.clone(),
        }
    }
}

const PDRR_COLUMNS: &str =
    "p.id, p.gufe_key, p.org, p.campaign, p.project, p.obj_key, p.location, p.ok, p.datetime_created, p.creator, p.content_sha256, p.size";

fn sk_from(gufe_key: &str, org: &str, campaign: &str, project: &str) -> Result<ScopedKey> {
    format!("{gufe_key}-{org}-{campaign}-{project}").parse().map_err(|_| StoreError::Invalid(format!("corrupt key {gufe_key} in store")))
}

/// A row of [`PDRR_COLUMNS`] as (row id, record).
fn pdrr_row(r: &AnyRow) -> Result<(i64, PdrrRecord)> {
    Ok((
        get_i64(r, 0)?,
        PdrrRecord {
            scoped_key: sk_from(&get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?, &get_str(r, 4)?)?,
            obj_key: get_str(r, 5)?,
            location: get_opt_str(r, 6)?,
            ok: get_i64(r, 7)? != 0,
            datetime_created: get_opt_str(r, 8)?,
            creator: get_opt_str(r, 9)?,
            content_sha256: get_opt_str(r, 10)?,
            size: get_opt_i64(r, 11)?,
        },
    ))
}

/// The newest of `rows` by `datetime_created` (unparsable or missing times count as
/// oldest; ties go to the later row).
fn newest(rows: &[AnyRow]) -> Result<Option<PdrrRecord>> {
    type Recency = (Option<DateTime<chrono::FixedOffset>>, i64);
    let mut best: Option<(Recency, PdrrRecord)> = None;
    for r in rows {
        let (id, rec) = pdrr_row(r)?;
        let key = (rec.datetime_created.as_deref().and_then(|s| DateTime::parse_from_rfc3339(s).ok()), id);
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, rec));
        }
    }
    Ok(best.map(|(_, rec)| rec))
}

/// Checks made before anything is written.
fn validate(result: &RecordedResult) -> Result<()> {
    GufeKey::new(&result.obj_key).map_err(|_| StoreError::Invalid(format!("invalid ProtocolDAGResult key {:?}", result.obj_key)))?;
    if result.size < 0 {
        return Err(StoreError::Invalid("result size must not be negative".into()));
    }
    if let Some(tb) = &result.tracebacks {
        if tb.tracebacks.len() != tb.source_keys.len() || tb.tracebacks.len() != tb.failure_keys.len() {
            return Err(StoreError::Invalid("tracebacks, source_keys and failure_keys must have the same length".into()));
        }
        if tb.tracebacks.iter().any(String::is_empty) {
            return Err(StoreError::Invalid("tracebacks must be non-empty strings".into()));
        }
    }
    Ok(())
}

/// Move a task that received a successful result to `complete` through [`apply_status`].
///
/// `running` → `complete` as the transition table allows. Deliberate fix of upstream
/// issue #513: a task that is `waiting` (e.g. its claim expired while it ran) or `error`
/// still ends `complete`, since the result is there; the table forbids those transitions
/// directly, so the task walks allowed steps (`error` → `waiting` → `running` →
/// `complete`), each with its usual side effects. `complete`, `invalid` and `deleted`
/// tasks keep their status.
async fn complete_task(conn: &mut AnyConnection, backend: crate::Backend, id: i64, from: TaskStatus) -> Result<()> {
    let path: &[TaskStatus] = match from {
        TaskStatus::Running => &[TaskStatus::Complete],
        TaskStatus::Waiting => &[TaskStatus::Running, TaskStatus::Complete],
        TaskStatus::Error => &[TaskStatus::Waiting, TaskStatus::Running, TaskStatus::Complete],
        TaskStatus::Complete | TaskStatus::Invalid | TaskStatus::Deleted => &[],
    };
    let mut status = from;
    for &to in path {
        if !apply_status(conn, backend, &[(id, status)], to, None).await?.first().copied().unwrap_or(false) {
            break;
        }
        status = to;
    }
    Ok(())
}

impl Store {
    /// Record a result for `task` in one transaction and return
    /// the PDRR's ScopedKey. See [`Store::record_result_at`].
    pub async fn record_result(&self, task: &ScopedKey, result: &RecordedResult) -> Result<ScopedKey> {
        self.record_result_at(task, result, Utc::now()).await
    }

    /// [`Store::record_result`] with an explicit creation time (which is part of the PDRR
    /// and so of its key):
    ///
    /// 1. the PDRR {location, obj_key, scope = the task's scope, ok, datetime_created =
    ///    `at` in Python isoformat, creator} is stored unless a PDRR with the same key
    ///    exists (identical content ⇒ one record), and linked RESULTS_IN;
    /// 2. success: the task goes to `complete` (all ACTIONS, APPLIES and its claim go);
    ///    unlike upstream also from `waiting` or `error` (issue #513), see
    ///    `complete_task`;
    /// 3. failure: the Tracebacks (if any were given — a failed result without unit
    ///    failures records none, instead of failing after the PDRR is stored as upstream
    ///    does) are stored with DETAILS → PDRR; the task goes to `error` if the
    ///    transition table allows; the failure time is logged for the compute service
    ///    whose identifier is `creator` (if registered); restart resolution runs for
    ///    the task.
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown task, [`StoreError::Invalid`] for a
    /// key that is not a Task's or malformed input (checked before anything is written).
    pub async fn record_result_at(&self, task: &ScopedKey, result: &RecordedResult, at: DateTime<Utc>) -> Result<ScopedKey> {
        if task.qualname() != "Task" {
            return Err(StoreError::Invalid("`task` ScopedKey does not correspond to a `Task`".into()));
        }
        validate(result)?;
        match self.backend {
            Backend::Postgres => {
                let mut tx = self.begin_write().await?;
                let sk = record_in(&mut tx, self.backend, task, result, at).await?;
                tx.commit().await?;
                Ok(sk)
            }
            // one writer: concurrent recordings share a transaction, and so one fsync
            Backend::Sqlite => self.record_grouped(task.clone(), result.clone(), at).await,
        }
    }

    /// Record through this store's [`RecordGroup`]: queue the request; whoever holds the
    /// group's permit runs every queued request in one transaction, each in its own
    /// savepoint (so one request's error leaves the others' work standing), and answers
    /// each after the commit.
    async fn record_grouped(&self, task: ScopedKey, result: RecordedResult, at: DateTime<Utc>) -> Result<ScopedKey> {
        let group = record_group(self);
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        group.queue().push(RecordRequest { task, result, at, reply });
        {
            let _permit = group.permit.acquire().await.map_err(|_| StoreError::Unavailable("result recorder closed".into()))?;
            if let Ok(a) = answer.try_recv() {
                return a;
            }
            let batch = std::mem::take(&mut *group.queue());
            if !batch.is_empty() {
                // in its own task: the batch completes (and answers the others) even if
                // this caller goes away
                let store = self.clone();
                let _ = tokio::spawn(async move { store.record_batch(batch).await }).await;
            }
        }
        answer.await.map_err(|_| StoreError::Unavailable("result recording was abandoned".into()))?
    }

    async fn record_batch(&self, batch: Vec<RecordRequest>) {
        let mut tx = match self.begin_write().await {
            Ok(tx) => tx,
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(e.replicate()));
                }
                return;
            }
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut failed: Option<StoreError> = None;
        for r in &batch {
            let outcome = async {
                let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                match record_in(&mut sp, self.backend, &r.task, &r.result, r.at).await {
                    Ok(sk) => {
                        sp.commit().await?;
                        Ok(Ok(sk))
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        Ok(Err(e))
                    }
                }
            }
            .await;
            match outcome {
                Ok(answer) => answers.push(answer),
                // the savepoint machinery itself failed: the transaction is unusable
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let committed = match failed {
            Some(e) => Err(e),
            None => tx.commit().await.map_err(StoreError::from),
        };
        match committed {
            Ok(()) => {
                for (r, a) in batch.into_iter().zip(answers) {
                    let _ = r.reply.send(a);
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(e.replicate()));
                }
            }
        }
    }

    /// Refuse a result for `task` from a compute service that never claimed it. Results
    /// from a service whose claim has since ended (completion elsewhere, registration
    /// expiry) are accepted: the claim log remembers every claim that ended, `task_claim`
    /// holds the live ones.
    pub async fn check_result_submitter(&self, task: &ScopedKey, service: &str) -> Result<()> {
        if task.qualname() != "Task" {
            return Err(StoreError::NotFound);
        }
        // the task and, in the same statement, whether the service ever claimed it
        let row = crate::db::bind_sk(
            sqlx::query(
                "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM task_claim_log l WHERE l.task_id = t.id AND l.service_identifier = $5) \
                 OR EXISTS (SELECT 1 FROM task_claim c JOIN compute_service s ON s.id = c.service_id \
                            WHERE c.task_id = t.id AND s.identifier = $5) \
                 THEN 1 ELSE 0 END AS BIGINT) FROM task t WHERE t.gufe_key = $1 AND t.org = $2 AND t.campaign = $3 AND t.project = $4",
            ),
            task,
        )
        .bind(service)
        .fetch_optional(self.reader())
        .await?
        .ok_or(StoreError::NotFound)?;
        match get_i64(&row, 0)? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict(format!("task {task} was not claimed by compute service {service}"))),
        }
    }

    /// Distinct PDRRs of a task with the given `ok`,
    /// ordered by ScopedKey; empty for unknown tasks.
    pub async fn task_results(&self, task: &ScopedKey, ok: bool) -> Result<Vec<ScopedKey>> {
        if task.qualname() != "Task" {
            return Ok(Vec::new());
        }
        let rows = crate::db::bind_sk(
            sqlx::query(
                "SELECT DISTINCT p.gufe_key, p.org, p.campaign, p.project FROM task t JOIN task_result tr ON tr.task_id = t.id \
             JOIN pdrr p ON p.id = tr.pdrr_id WHERE t.gufe_key = $1 AND t.org = $2 AND t.campaign = $3 AND t.project = $4 AND p.ok = $5 \
             ORDER BY p.org, p.campaign, p.project, p.gufe_key",
            ),
            task,
        )
        .bind(ok as i64)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(|r| sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)).collect()
    }

    /// Distinct PDRRs with the given `ok` over all tasks of a transformation (routes
    /// U53/U54), ordered by ScopedKey; empty for unknown transformations.
    pub async fn transformation_results(&self, transformation: &ScopedKey, ok: bool) -> Result<Vec<ScopedKey>> {
        let mut conn = self.reader().acquire().await?;
        let Some(tf) = object_id(&mut conn, transformation).await? else { return Ok(Vec::new()) };
        let rows = sqlx::query(
            "SELECT DISTINCT p.gufe_key, p.org, p.campaign, p.project FROM task t JOIN task_result tr ON tr.task_id = t.id \
             JOIN pdrr p ON p.id = tr.pdrr_id WHERE t.transformation_id = $1 AND p.ok = $2 ORDER BY p.org, p.campaign, p.project, p.gufe_key",
        )
        .bind(tf)
        .bind(ok as i64)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(|r| sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)).collect()
    }

    /// The stored PDRR under this ScopedKey, or None.
    pub async fn get_pdrr(&self, pdrr: &ScopedKey) -> Result<Option<PdrrRecord>> {
        if pdrr.qualname() != "ProtocolDAGResultRef" {
            return Ok(None);
        }
        let row = crate::db::bind_sk(
            sqlx::query(&format!(
                "SELECT {PDRR_COLUMNS} FROM pdrr p WHERE p.gufe_key = $1 AND p.org = $2 AND p.campaign = $3 AND p.project = $4"
            )),
            pdrr,
        )
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|r| pdrr_row(&r)).transpose()?.map(|(_, rec)| rec))
    }

    /// The result an extending task starts from: the newest successful
    /// PDRR of the task `task` extends. None if `task` extends nothing or that task has no
    /// successful result. Deliberate fix of an upstream quirk: upstream takes *all* PDRRs of the
    /// extended task and fails when there is more than one (e.g. a failure, then a
    /// success). [`StoreError::NotFound`] if `task` is unknown.
    pub async fn extended_result_location(&self, task: &ScopedKey) -> Result<Option<PdrrRecord>> {
        let mut conn = self.reader().acquire().await?;
        let t = load_task(&mut conn, task).await?.ok_or(StoreError::NotFound)?;
        let Some(extended) = t.extends_id else { return Ok(None) };
        let rows = sqlx::query(&format!(
            "SELECT {PDRR_COLUMNS} FROM task_result tr JOIN pdrr p ON p.id = tr.pdrr_id WHERE tr.task_id = $1 AND p.ok = 1"
        ))
        .bind(extended)
        .fetch_all(&mut *conn)
        .await?;
        newest(&rows)
    }
}

impl Store {
    /// Is `task` still wanted from `service`: running, claimed by it, and actioned on at
    /// least one TaskHub whose network is `active` or `inactive` (not `deleted` or
    /// `invalid`)? A compute service asks while it works and stops early when the answer
    /// is no (upstream issue #301: work continued on tasks whose networks were deleted or
    /// that were cancelled everywhere). The same rule decides claimability.
    pub async fn task_still_wanted(&self, task: &ScopedKey, service: &str) -> Result<bool> {
        let mut conn = self.reader().acquire().await?;
        let Some(t) = load_task(&mut conn, task).await? else { return Ok(false) };
        if t.status != TaskStatus::Running {
            return Ok(false);
        }
        let row = sqlx::query(
            "SELECT 1 FROM task_claim c JOIN compute_service cs ON cs.id = c.service_id \
             WHERE c.task_id = $1 AND cs.identifier = $2 \
             AND EXISTS (SELECT 1 FROM task_action a JOIN network n ON n.id = a.network_id WHERE a.task_id = $1 AND n.state IN ('active', 'inactive'))",
        )
        .bind(t.id)
        .bind(service)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.is_some())
    }

    /// Give claimed tasks back: each task claimed by `service` and `running` returns to
    /// `waiting` (through the transition table) and loses the claim. Per input the key if
    /// it was released, else None.
    pub async fn release_tasks(&self, tasks: &[ScopedKey], service: &str) -> Result<Vec<Option<ScopedKey>>> {
        let mut tx = self.begin_write().await?;
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            let Some(t) = load_task(&mut tx, task).await? else {
                out.push(None);
                continue;
            };
            let held = sqlx::query(
                "SELECT 1 FROM task_claim c JOIN compute_service cs ON cs.id = c.service_id WHERE c.task_id = $1 AND cs.identifier = $2",
            )
            .bind(t.id)
            .bind(service)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            if held && t.status == TaskStatus::Running {
                apply_status(&mut tx, self.backend, &[(t.id, t.status)], TaskStatus::Waiting, Some(StatusCause::Released)).await?;
                out.push(Some(task.clone()));
            } else {
                out.push(None);
            }
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// The body of [`Store::record_result_at`] inside the caller's write transaction.
async fn record_in(
    conn: &mut AnyConnection,
    backend: Backend,
    task: &ScopedKey,
    result: &RecordedResult,
    at: DateTime<Utc>,
) -> Result<ScopedKey> {
    let row = crate::db::bind_sk(
        sqlx::query(
            "SELECT t.id, t.status, (SELECT cs.identifier FROM task_claim tc JOIN compute_service cs ON cs.id = tc.service_id \
             WHERE tc.task_id = t.id) FROM task t WHERE t.gufe_key = $1 AND t.org = $2 AND t.campaign = $3 AND t.project = $4",
        ),
        task,
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound)?;
    let (task_id, task_status, holder) = (get_i64(&row, 0)?, crate::tasks::parse_status(&get_str(&row, 1)?)?, get_opt_str(&row, 2)?);
    // The same result pushed again (a retry after the answer to a push that was recorded got
    // lost, e.g. the API instance died): the reference already stored stands. Its key holds
    // the time of the push, so without this the retry would become a second result of the
    // one execution and count twice towards the transformation's successes.
    let again = sqlx::query(
        "SELECT p.gufe_key FROM task_result tr JOIN pdrr p ON p.id = tr.pdrr_id \
         WHERE tr.task_id = $1 AND p.obj_key = $2 AND p.ok = $3 AND COALESCE(p.creator, '') = COALESCE($4, '')",
    )
    .bind(task_id)
    .bind(result.obj_key.as_str())
    .bind(result.ok as i64)
    .bind(result.creator.clone())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(r) = again {
        return crate::queries::sk_from(&get_str(&r, 0)?, task.org(), task.campaign(), task.project());
    }
    let fields = PdrrFields {
        location: Some(result.location.clone()),
        obj_key: result.obj_key.clone(),
        scope: task.scope().to_string(),
        ok: result.ok,
        datetime_created: Some(python_isoformat(at)),
        creator: result.creator.clone(),
    };
    let pdrr_sk =
        ScopedKey::new(fields.key(), task.scope().clone()).map_err(|e| StoreError::Invalid(format!("invalid result key: {e}")))?;
    let inserted = crate::db::bind_sk(
        sqlx::query(
            "INSERT INTO pdrr (gufe_key, org, campaign, project, obj_key, location, ok, datetime_created, creator, content_sha256, size) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (gufe_key, org, campaign, project) DO UPDATE SET obj_key = excluded.obj_key RETURNING id",
        ),
        &pdrr_sk,
    )
    .bind(fields.obj_key.as_str())
    .bind(fields.location.clone())
    .bind(fields.ok as i64)
    .bind(fields.datetime_created.clone())
    .bind(fields.creator.clone())
    .bind(result.content_sha256.as_str())
    .bind(result.size)
    // fetch_all: SQLite must step an INSERT … RETURNING to completion before the next
    // statement runs
    .fetch_all(&mut *conn)
    .await?;
    // (an identical reference already stored is reused: the no-op update returns its id)
    let pdrr_id = get_i64(inserted.first().ok_or_else(|| StoreError::Invalid("result reference not stored".into()))?, 0)?;
    let linked = sqlx::query("INSERT INTO task_result (task_id, pdrr_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(task_id)
        .bind(pdrr_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if linked == 1 && result.ok {
        // one more distinct success for the task's transformation, unless another of its
        // tasks already holds this very reference
        sqlx::query(
            "UPDATE transformation SET ok_results = ok_results + 1 WHERE id = (SELECT transformation_id FROM task WHERE id = $1) \
             AND NOT EXISTS (SELECT 1 FROM task_result tr JOIN task t ON t.id = tr.task_id \
             WHERE tr.pdrr_id = $2 AND tr.task_id <> $1 AND t.transformation_id = transformation.id)",
        )
        .bind(task_id)
        .bind(pdrr_id)
        .execute(&mut *conn)
        .await?;
    }

    // A late failure from a service that lost its claim (its registration expired and
    // another service claimed the task again) is recorded but does not disturb the run in
    // progress; a late success completes the task (upstream issue #513), which also
    // releases the other service's claim.
    let other_service_runs_it = holder.is_some() && holder != result.creator;

    if result.ok {
        complete_task(conn, backend, task_id, task_status).await?;
    } else {
        if let Some(tb) = result.tracebacks.as_ref().filter(|tb| !tb.tracebacks.is_empty()) {
            // Identical traceback content in one scope is one record (its key is a content
            // hash) that may detail several results, as upstream's graph allows.
            sqlx::query(
                "INSERT INTO tracebacks (gufe_key, org, campaign, project, body) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (gufe_key, org, campaign, project) DO NOTHING",
            )
            .bind(tb.key().as_str())
            .bind(pdrr_sk.org())
            .bind(pdrr_sk.campaign())
            .bind(pdrr_sk.project())
            .bind(tb.keyed_dict().to_python_json())
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO pdrr_tracebacks (pdrr_id, tracebacks_id) SELECT $1, id FROM tracebacks \
                 WHERE gufe_key = $2 AND org = $3 AND campaign = $4 AND project = $5 ON CONFLICT DO NOTHING",
            )
            .bind(pdrr_id)
            .bind(tb.key().as_str())
            .bind(pdrr_sk.org())
            .bind(pdrr_sk.campaign())
            .bind(pdrr_sk.project())
            .execute(&mut *conn)
            .await?;
        }
        if other_service_runs_it {
            return Ok(pdrr_sk);
        }
        apply_status(conn, backend, &[(task_id, task_status)], TaskStatus::Error, None).await?;
        if let Some(creator) = &result.creator {
            sqlx::query(
                "INSERT INTO compute_service_failure (service_id, failed_at) SELECT id, $1 FROM compute_service WHERE identifier = $2",
            )
            .bind(at.timestamp_micros())
            .bind(creator.as_str())
            .execute(&mut *conn)
            .await?;
        }
        resolve_restarts(conn, backend, &[task_id]).await?;
    }
    Ok(pdrr_sk)
}

/// A recording waiting for its group's transaction.
struct RecordRequest {
    task: ScopedKey,
    result: RecordedResult,
    at: DateTime<Utc>,
    reply: tokio::sync::oneshot::Sender<Result<ScopedKey>>,
}

/// Recordings of one store waiting to share a transaction, and the permit to run them.
struct RecordGroup {
    queue: Mutex<Vec<RecordRequest>>,
    permit: tokio::sync::Semaphore,
}

impl RecordGroup {
    fn queue(&self) -> MutexGuard<'_, Vec<RecordRequest>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static RECORD_GROUPS: LazyLock<Mutex<HashMap<String, Arc<RecordGroup>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn record_group(store: &Store) -> Arc<RecordGroup> {
    let mut map = RECORD_GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(store.location().to_string())
        .or_insert_with(|| Arc::new(RecordGroup { queue: Mutex::new(Vec::new()), permit: tokio::sync::Semaphore::new(1) }))
        .clone()
}
