//! Compute services: registrations — register, deregister,
//! heartbeat, expiry — and failure accounting ("can claim"). Claiming is in
//! [`crate::claims`] (its types are re-exported here); compute managers are in
//! [`crate::managers`].
//!
//! Network state: tasks actioned only on hubs of `deleted` or `invalid` networks are not
//! claimable (nor counted for compute managers). Upstream ignores network state when
//! claiming, which spends compute on networks users have declared
//! broken or removable; `inactive` networks are still computed, as upstream.

use std::collections::{HashMap, HashSet};

use alchemiscale_model::{ComputeManagerId, ComputeServiceId, TaskStatus};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

use crate::db::{execute_in_chunks, fetch_in_chunks, get_i64, get_str, json_array, json_text_list, Arg};
use crate::error::{Result, StoreError};
use crate::tasks::{apply_status, parse_status, StatusCause};
use crate::{Backend, Store};

pub use crate::claims::{ClaimOutcome, HUB_POOL_TTL, MAX_CLAIM_COUNT};

/// A compute service registration, for listings and administration.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeServiceInfo {
    pub identifier: ComputeServiceId,
    pub registered: DateTime<Utc>,
    pub heartbeat: DateTime<Utc>,
    /// Name of the compute manager that started it (MANAGES is derived from this).
    pub manager_name: Option<String>,
    /// Tasks it currently holds a claim on.
    pub claimed_tasks: i64,
    /// Failure times currently recorded (pruned by the "can claim" check).
    pub failures: i64,
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| StoreError::Invalid(format!("corrupt timestamp {v} in store")))
}

/// `now` minus `seconds` (in microseconds), saturating; negative durations are refused.
pub(crate) fn cutoff(now: i64, seconds: i64, what: &str) -> Result<i64> {
    if seconds < 0 {
        return Err(StoreError::Invalid(format!("{what} must not be negative, got {seconds}")));
    }
    Ok(now.saturating_sub(seconds.saturating_mul(1_000_000)))
}

pub(crate) fn service_id(s: &str) -> Result<ComputeServiceId> {
    s.parse().map_err(|_| StoreError::Invalid(format!("corrupt compute service identifier '{s}' in store")))
}

// ---------------------------------------------------------------------------------------
// Registrations.

/// The registration row of a service: (row id, failures after `forgive` cutoff, failures
/// at or before it). On PostgreSQL the row is held `FOR KEY SHARE` until commit, so an
/// expiry or deregistration (which take `FOR UPDATE`) waits for this transaction.
pub(crate) async fn service_row(
    conn: &mut AnyConnection,
    backend: Backend,
    id: &ComputeServiceId,
    forgive_cutoff: i64,
) -> Result<Option<(i64, i64, i64)>> {
    let lock = if backend == Backend::Postgres { " FOR KEY SHARE" } else { "" };
    let sql = format!(
        "SELECT cs.id, \
         (SELECT COUNT(*) FROM compute_service_failure f WHERE f.service_id = cs.id AND f.failed_at > $2), \
         (SELECT COUNT(*) FROM compute_service_failure f WHERE f.service_id = cs.id AND f.failed_at <= $2) \
         FROM compute_service cs WHERE cs.identifier = $1{lock}"
    );
    let row = sqlx::query(&sql).bind(id.to_string()).bind(forgive_cutoff).fetch_optional(&mut *conn).await?;
    row.map(|r| Ok((get_i64(&r, 0)?, get_i64(&r, 1)?, get_i64(&r, 2)?))).transpose()
}

/// [`service_row`] for several services at once, by identifier (locked in row order on
/// PostgreSQL).
pub(crate) async fn service_rows<'a>(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: impl Iterator<Item = &'a ComputeServiceId>,
    forgive_cutoff: i64,
) -> Result<HashMap<String, (i64, i64, i64)>> {
    let names: Vec<String> = ids.map(|i| i.to_string()).collect::<HashSet<_>>().into_iter().collect();
    let lock = if backend == Backend::Postgres { " ORDER BY cs.id FOR KEY SHARE" } else { "" };
    let sql = format!(
        "SELECT cs.id, cs.identifier, \
         (SELECT COUNT(*) FROM compute_service_failure f WHERE f.service_id = cs.id AND f.failed_at > $1), \
         (SELECT COUNT(*) FROM compute_service_failure f WHERE f.service_id = cs.id AND f.failed_at <= $1) \
         FROM compute_service cs WHERE cs.identifier IN ({}){lock}",
        json_text_list(backend, 2)
    );
    let rows = sqlx::query(&sql).bind(forgive_cutoff).bind(json_array(names.iter().map(String::as_str))).fetch_all(&mut *conn).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        out.insert(get_str(r, 1)?, (get_i64(r, 0)?, get_i64(r, 2)?, get_i64(r, 3)?));
    }
    Ok(out)
}

/// The "can claim" check on a locked/known service row: drop failure
/// times at or before the forgive cutoff, then allowed iff at most `max_failures` remain.
pub(crate) async fn can_claim_row(conn: &mut AnyConnection, row: (i64, i64, i64), forgive_cutoff: i64, max_failures: i64) -> Result<bool> {
    let (id, recent, old) = row;
    if old > 0 {
        sqlx::query("DELETE FROM compute_service_failure WHERE service_id = $1 AND failed_at <= $2")
            .bind(id)
            .bind(forgive_cutoff)
            .execute(&mut *conn)
            .await?;
    }
    Ok(recent <= max_failures)
}

/// Remove service registrations (by row id): their `running` claimed tasks go back to
/// `waiting` through [`apply_status`], then their claims, failure log and the
/// registrations themselves are deleted. The caller holds the
/// service rows (`FOR UPDATE` on PostgreSQL).
async fn release_services(conn: &mut AnyConnection, backend: Backend, services: &[i64], cause: StatusCause) -> Result<()> {
    if services.is_empty() {
        return Ok(());
    }
    let ids: Vec<Arg> = services.iter().map(|&i| Arg::I64(i)).collect();
    // lock the claimed tasks so the statuses read are the ones the update applies to
    let lock = if backend == Backend::Postgres { " FOR UPDATE OF t" } else { "" };
    let rows = fetch_in_chunks(
        conn,
        backend,
        &format!("SELECT t.id, t.status FROM task_claim c JOIN task t ON t.id = c.task_id WHERE c.service_id IN ({{}}){lock}"),
        &[],
        &ids,
    )
    .await?;
    let mut running = Vec::new();
    for r in &rows {
        let (id, status) = (get_i64(r, 0)?, parse_status(&get_str(r, 1)?)?);
        if status == TaskStatus::Running {
            running.push((id, status));
        }
    }
    apply_status(conn, backend, &running, TaskStatus::Waiting, Some(cause)).await?;
    crate::tasks::end_claims(conn, backend, "service_id", &ids).await?;
    execute_in_chunks(conn, backend, "DELETE FROM compute_service_failure WHERE service_id IN ({})", &[], &ids).await?;
    execute_in_chunks(conn, backend, "DELETE FROM compute_service WHERE id IN ({})", &[], &ids).await?;
    Ok(())
}

/// Expire every registration whose heartbeat is older than `cutoff`; returns their ids.
/// On PostgreSQL rows another transaction holds are skipped (a service mid-claim, or one
/// another expiry is already removing): they are expired by a later call, and expiries
/// never wait on each other.
async fn expire_before(conn: &mut AnyConnection, backend: Backend, cutoff: i64) -> Result<Vec<String>> {
    let lock = if backend == Backend::Postgres { " ORDER BY id FOR UPDATE SKIP LOCKED" } else { "" };
    let rows = sqlx::query(&format!("SELECT id, identifier FROM compute_service WHERE heartbeat < $1{lock}"))
        .bind(cutoff)
        .fetch_all(&mut *conn)
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut names = Vec::with_capacity(rows.len());
    for r in &rows {
        ids.push(get_i64(r, 0)?);
        names.push(get_str(r, 1)?);
    }
    release_services(conn, backend, &ids, StatusCause::Expired).await?;
    Ok(names)
}

/// PostgreSQL reports a deadlock (40P01) when two transactions wait on each other; the
/// loser is rolled back and can simply run again.
fn is_deadlock(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(d)) if d.code().as_deref() == Some("40P01"))
}

/// Evaluate `$call` (a future-producing expression) again, up to three attempts in all,
/// while PostgreSQL aborts it as a deadlock victim.
macro_rules! retry_deadlock {
    ($call:expr) => {{
        let mut attempt = 0;
        loop {
            match $call.await {
                Err(e) if is_deadlock(&e) && attempt < 2 => attempt += 1,
                other => break other,
            }
        }
    }};
}

impl Store {
    // -- compute service registrations --------------------------------------

    /// Register a compute service with `registered` =
    /// `heartbeat` = now and no failures. With a manager id, its *name* must belong to a
    /// registered compute manager (any uuid), else [`StoreError::Invalid`] `Could not find
    /// ComputeManagerRegistration`; the service is then managed by it (MANAGES is derived
    /// from `manager_name`). An identifier that is already registered is
    /// [`StoreError::Conflict`].
    pub async fn register_compute_service(&self, id: &ComputeServiceId, manager: Option<&ComputeManagerId>) -> Result<()> {
        self.register_compute_service_at(id, manager, Utc::now()).await
    }

    /// [`Store::register_compute_service`] at an explicit time.
    pub async fn register_compute_service_at(
        &self,
        id: &ComputeServiceId,
        manager: Option<&ComputeManagerId>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if let Some(m) = manager {
            let lock = if self.backend == Backend::Postgres { " FOR KEY SHARE" } else { "" };
            let found = sqlx::query(&format!("SELECT id FROM compute_manager WHERE name = $1{lock}"))
                .bind(m.name())
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(StoreError::Invalid("Could not find ComputeManagerRegistration".into()));
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO compute_service (identifier, registered, heartbeat, manager_name) VALUES ($1, $2, $2, $3) ON CONFLICT (identifier) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(micros(now))
        .bind(manager.map(|m| m.name().to_string()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("compute service {id} is already registered")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deregister a compute service: its `running` claimed
    /// tasks go back to `waiting`, its claims and failure log go, the registration is
    /// deleted. Unknown ids are fine (upstream fails with a server error; services call
    /// this on every shutdown, so the port makes it idempotent).
    pub async fn deregister_compute_service(&self, id: &ComputeServiceId) -> Result<()> {
        retry_deadlock!(self.deregister_once(id))
    }

    async fn deregister_once(&self, id: &ComputeServiceId) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let row = sqlx::query(&format!("SELECT id FROM compute_service WHERE identifier = $1{lock}"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(r) = row {
            release_services(&mut tx, self.backend, &[get_i64(&r, 0)?], StatusCause::Released).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Heartbeat: first expire every registration whose
    /// heartbeat is older than now − `expire_seconds` (as [`Store::expire_compute_services`]),
    /// then set this service's heartbeat to now. An unknown (e.g. already expired) service
    /// is not an error: nothing is updated, as upstream.
    pub async fn heartbeat_compute_service(&self, id: &ComputeServiceId, expire_seconds: i64) -> Result<()> {
        self.heartbeat_compute_service_at(id, expire_seconds, Utc::now()).await
    }

    /// [`Store::heartbeat_compute_service`] at an explicit time.
    pub async fn heartbeat_compute_service_at(&self, id: &ComputeServiceId, expire_seconds: i64, now: DateTime<Utc>) -> Result<()> {
        let cut = cutoff(micros(now), expire_seconds, "the registration expiry time")?;
        retry_deadlock!(self.heartbeat_once(id, cut, micros(now)))
    }

    async fn heartbeat_once(&self, id: &ComputeServiceId, cut: i64, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        expire_before(&mut tx, self.backend, cut).await?;
        sqlx::query("UPDATE compute_service SET heartbeat = $1 WHERE identifier = $2")
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Expire every registration whose heartbeat is older than now − `expire_seconds`
    ///: each one's `running` claimed tasks go back to `waiting` and the
    /// registration, its claims and failure log are deleted. Returns the expired ids.
    ///
    /// Upstream expires only as a side effect of some service's heartbeat, so
    /// with no live services nothing ever expires; the server calls this periodically.
    pub async fn expire_compute_services(&self, expire_seconds: i64) -> Result<Vec<String>> {
        self.expire_compute_services_at(expire_seconds, Utc::now()).await
    }

    /// [`Store::expire_compute_services`] at an explicit time.
    pub async fn expire_compute_services_at(&self, expire_seconds: i64, now: DateTime<Utc>) -> Result<Vec<String>> {
        let cut = cutoff(micros(now), expire_seconds, "the registration expiry time")?;
        retry_deadlock!(self.expire_once(cut))
    }

    async fn expire_once(&self, cut: i64) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let expired = expire_before(&mut tx, self.backend, cut).await?;
        tx.commit().await?;
        Ok(expired)
    }

    /// The "can claim" check: failure times at or before now −
    /// `forgive_seconds` are dropped for good, then the service may claim iff at most
    /// `max_failures` remain. None if the service is not registered.
    pub async fn compute_service_can_claim(&self, id: &ComputeServiceId, forgive_seconds: i64, max_failures: i64) -> Result<Option<bool>> {
        let forgive = cutoff(crate::now_micros(), forgive_seconds, "the failure forgive time")?;
        let mut tx = self.begin_write().await?;
        let Some(row) = service_row(&mut tx, self.backend, id, forgive).await? else {
            return Ok(None);
        };
        let ok = can_claim_row(&mut tx, row, forgive, max_failures).await?;
        tx.commit().await?;
        Ok(Some(ok))
    }

    /// Every compute service registration, ordered by identifier.
    pub async fn list_compute_services(&self) -> Result<Vec<ComputeServiceInfo>> {
        let rows = sqlx::query(
            "SELECT cs.identifier, cs.registered, cs.heartbeat, cs.manager_name, \
             (SELECT COUNT(*) FROM task_claim c WHERE c.service_id = cs.id), \
             (SELECT COUNT(*) FROM compute_service_failure f WHERE f.service_id = cs.id) \
             FROM compute_service cs ORDER BY cs.identifier",
        )
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ComputeServiceInfo {
                    identifier: service_id(&get_str(r, 0)?)?,
                    registered: from_micros(get_i64(r, 1)?)?,
                    heartbeat: from_micros(get_i64(r, 2)?)?,
                    manager_name: crate::db::get_opt_str(r, 3)?,
                    claimed_tasks: get_i64(r, 4)?,
                    failures: get_i64(r, 5)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs() {
        assert_eq!(cutoff(10_000_000, 3, "x").unwrap(), 7_000_000);
        assert_eq!(cutoff(0, i64::MAX, "x").unwrap(), -i64::MAX);
        assert!(cutoff(0, -1, "x").is_err());
    }
}
