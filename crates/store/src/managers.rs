//! Compute managers: registration (with steal), status updates and
//! their expiry, clearing errors, and the instruction a manager asks for, with its count
//! of claimable tasks.
//!
//! The MANAGES relationship is not stored: a manager manages the service registrations
//! whose `manager_name` equals its name, which is exactly the set upstream attaches
//! at manager registration and at service registration.

use alchemiscale_model::scope::minimise;
use alchemiscale_model::status::ComputeManagerStatus;
use alchemiscale_model::{ComputeManagerId, Scope};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

pub use alchemiscale_model::manager::ManagerInstruction;

use crate::claims::{protocol_filter, scopes_condition};
use crate::compute::{can_claim_row, cutoff, from_micros, micros, service_id};
use crate::db::{bind, dialect, get_i64, get_str, json_array, json_text_list, Arg};
use crate::error::{Result, StoreError};
use crate::{Backend, Store};

/// The SHUTDOWN message of a manager instruction.
pub const MANAGER_NOT_FOUND: &str = "no compute manager was found with the given manager name and UUID";

/// A compute manager registration.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeManagerInfo {
    pub id: ComputeManagerId,
    pub registered: DateTime<Utc>,
    pub last_status_update: DateTime<Utc>,
    pub status: ComputeManagerStatus,
    pub detail: Option<String>,
    pub saturation: Option<f64>,
}

/// Parse a compute manager status string with upstream's message (route C18):
/// `"<value>" is not a valid ComputeManagerStatus`.
pub fn parse_compute_manager_status(s: &str) -> Result<ComputeManagerStatus> {
    s.parse().map_err(|_| StoreError::Invalid(format!("\"{s}\" is not a valid ComputeManagerStatus")))
}

const MANAGER_COLUMNS: &str = "name, uuid, registered, last_status_update, status, detail, saturation";

fn manager_row(r: &sqlx::any::AnyRow) -> Result<ComputeManagerInfo> {
    let name = get_str(r, 0)?;
    let uuid = get_str(r, 1)?;
    let id =
        format!("{name}-{uuid}").parse().map_err(|_| StoreError::Invalid(format!("corrupt compute manager '{name}-{uuid}' in store")))?;
    let status = get_str(r, 4)?;
    Ok(ComputeManagerInfo {
        id,
        registered: from_micros(get_i64(r, 2)?)?,
        last_status_update: from_micros(get_i64(r, 3)?)?,
        status: status.parse().map_err(|_| StoreError::Invalid(format!("corrupt compute manager status '{status}' in store")))?,
        detail: crate::db::get_opt_str(r, 5)?,
        saturation: sqlx::Row::try_get::<Option<f64>, _>(r, 6)?,
    })
}

impl Store {
    /// Number of distinct claimable tasks for a compute manager: `waiting`
    /// tasks actioned on at least one hub, in one of `scopes`, whose extended task (if
    /// any) is `complete`, performing a transformation with one of `protocols` (an empty
    /// list means no filter; names must be valid protocol names). ACTIONS weights and hub
    /// weights are ignored, as upstream; hubs of `deleted`/`invalid` networks do
    /// not count (see the module documentation).
    pub async fn count_claimable_tasks(&self, scopes: &[Scope], protocols: &[String]) -> Result<i64> {
        let protocols = if protocols.is_empty() { None } else { protocol_filter(Some(protocols))? };
        let mut conn = self.reader().acquire().await?;
        count_claimable(&mut conn, self.backend, &minimise(scopes), protocols.as_deref()).await
    }

    /// Register a compute manager with status OK, detail "",
    /// saturation 0. If a manager with the same name is registered:
    /// [`StoreError::Invalid`] `ComputeManager with this name is already registered with
    /// status {OK|ERROR}` — unless `steal` is set and that registration's status is OK, in
    /// which case it is replaced (an ERROR registration is never stolen). `steal` with
    /// nothing registered simply registers (upstream fails with a server error). The
    /// services whose `manager_name` is this name are managed by the new registration.
    pub async fn register_compute_manager(&self, id: &ComputeManagerId, steal: bool) -> Result<()> {
        self.register_compute_manager_at(id, steal, Utc::now()).await
    }

    /// [`Store::register_compute_manager`] at an explicit time.
    pub async fn register_compute_manager_at(&self, id: &ComputeManagerId, steal: bool, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let existing = sqlx::query(&format!("SELECT id, status FROM compute_manager WHERE name = $1{lock}"))
            .bind(id.name())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(r) = existing {
            let status = get_str(&r, 1)?;
            if !(steal && status == ComputeManagerStatus::Ok.as_str()) {
                return Err(already_registered(&status));
            }
            sqlx::query("DELETE FROM compute_manager WHERE id = $1").bind(get_i64(&r, 0)?).execute(&mut *tx).await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO compute_manager (name, uuid, registered, last_status_update, status, detail, saturation) \
             VALUES ($1, $2, $3, $3, 'OK', '', 0.0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(id.name())
        .bind(id.uuid())
        .bind(micros(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // a concurrent registration of the same name won
            let status = sqlx::query("SELECT status FROM compute_manager WHERE name = $1").bind(id.name()).fetch_optional(&mut *tx).await?;
            let status = status.map(|r| get_str(&r, 0)).transpose()?.unwrap_or_else(|| "OK".into());
            return Err(already_registered(&status));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deregister a compute manager: its registration (name and
    /// uuid) is deleted unless its status is ERROR, in which case it silently stays (an
    /// administrator clears it with [`Store::clear_compute_manager_error`]). Unknown ids
    /// are a no-op. Services it managed stay registered.
    pub async fn deregister_compute_manager(&self, id: &ComputeManagerId) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM compute_manager WHERE name = $1 AND uuid = $2 AND status <> 'ERROR'")
            .bind(id.name())
            .bind(id.uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record a manager's status, then expire manager
    /// registrations: OK ones whose last update is older than now − `expire_ok_seconds`,
    /// ERROR ones older than now − `expire_error_seconds`.
    ///
    /// Validation ([`StoreError::Invalid`], upstream's messages and order): OK requires a
    /// saturation (`saturation is required for the 'OK' status`) and forbids a non-empty
    /// detail (`detail should only be provided for the 'ERROR' status`); ERROR forbids a
    /// saturation (`saturation should only be provided for the 'OK' status`) and requires
    /// a non-empty detail (`detail is required for the 'ERROR' status`); saturation must
    /// be within [0, 1] (`saturation must be between 0 and 1`); an unknown name/uuid is
    /// `No record for ComputeManager: <id>`. Parse status strings with
    /// [`parse_compute_manager_status`] for the invalid-status message.
    ///
    /// An OK update stores detail null.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_compute_manager_status(
        &self,
        id: &ComputeManagerId,
        status: ComputeManagerStatus,
        detail: Option<&str>,
        saturation: Option<f64>,
        expire_ok_seconds: i64,
        expire_error_seconds: i64,
    ) -> Result<()> {
        self.update_compute_manager_status_at(id, status, detail, saturation, expire_ok_seconds, expire_error_seconds, Utc::now()).await
    }

    /// [`Store::update_compute_manager_status`] at an explicit time.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_compute_manager_status_at(
        &self,
        id: &ComputeManagerId,
        status: ComputeManagerStatus,
        detail: Option<&str>,
        saturation: Option<f64>,
        expire_ok_seconds: i64,
        expire_error_seconds: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let detail = detail.filter(|d| !d.is_empty());
        match status {
            ComputeManagerStatus::Ok => {
                if saturation.is_none() {
                    return Err(StoreError::Invalid("saturation is required for the 'OK' status".into()));
                }
                if detail.is_some() {
                    return Err(StoreError::Invalid("detail should only be provided for the 'ERROR' status".into()));
                }
            }
            ComputeManagerStatus::Error => {
                if saturation.is_some() {
                    return Err(StoreError::Invalid("saturation should only be provided for the 'OK' status".into()));
                }
                if detail.is_none() {
                    return Err(StoreError::Invalid("detail is required for the 'ERROR' status".into()));
                }
            }
        }
        if let Some(s) = saturation {
            if !(0.0..=1.0).contains(&s) {
                return Err(StoreError::Invalid("saturation must be between 0 and 1".into()));
            }
        }
        let now_us = micros(now);
        let ok_cut = cutoff(now_us, expire_ok_seconds, "the manager expiry time")?;
        let error_cut = cutoff(now_us, expire_error_seconds, "the manager error expiry time")?;
        let mut tx = self.begin_write().await?;
        // One statement per status, so no NULL float is ever bound: sqlx 0.8's `Any`
        // driver sends a NULL f64 as a float4 to PostgreSQL, which then fixes the cached
        // statement's parameter type and rejects later real f64 values (22P03).
        let update = match (status, saturation, detail) {
            (ComputeManagerStatus::Ok, Some(s), _) => sqlx::query(
                "UPDATE compute_manager SET status = 'OK', detail = NULL, saturation = $1, last_status_update = $2 WHERE name = $3 AND uuid = $4",
            )
            .bind(s),
            (_, _, Some(d)) => sqlx::query(
                "UPDATE compute_manager SET status = 'ERROR', detail = $1, saturation = NULL, last_status_update = $2 WHERE name = $3 AND uuid = $4",
            )
            .bind(d),
            _ => return Err(StoreError::Invalid("inconsistent compute manager status update".into())),
        };
        let updated = update.bind(now_us).bind(id.name()).bind(id.uuid()).execute(&mut *tx).await?.rows_affected();
        if updated == 0 {
            return Err(StoreError::Invalid(format!("No record for ComputeManager: {id}")));
        }
        sqlx::query(
            "DELETE FROM compute_manager WHERE (status = 'OK' AND last_status_update < $1) OR (status = 'ERROR' AND last_status_update < $2)",
        )
        .bind(ok_cut)
        .bind(error_cut)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remove the registration named `name` if its status is ERROR (route
    /// C19); otherwise [`StoreError::Invalid`] `Could not find an ERROR compute manager
    /// with the provided name and UUID` (also for an unknown or invalid name).
    pub async fn clear_compute_manager_error(&self, name: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM compute_manager WHERE name = $1 AND status = 'ERROR'")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::Invalid("Could not find an ERROR compute manager with the provided name and UUID".into()));
        }
        tx.commit().await?;
        Ok(())
    }

    /// The registration of the manager named `name`, if any.
    pub async fn get_compute_manager(&self, name: &str) -> Result<Option<ComputeManagerInfo>> {
        let row = sqlx::query(&format!("SELECT {MANAGER_COLUMNS} FROM compute_manager WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| manager_row(&r)).transpose()
    }

    /// Every compute manager registration, ordered by name.
    pub async fn list_compute_managers(&self) -> Result<Vec<ComputeManagerInfo>> {
        let rows = sqlx::query(&format!("SELECT {MANAGER_COLUMNS} FROM compute_manager ORDER BY name")).fetch_all(self.reader()).await?;
        rows.iter().map(manager_row).collect()
    }

    /// The instruction for a compute manager:
    /// 1. no registration with this name *and* uuid → [`ManagerInstruction::Shutdown`];
    /// 2. any service it manages fails the "can claim" check (pruning old failures)
    ///    → [`ManagerInstruction::Skip`] with the managed service ids;
    /// 3. else [`ManagerInstruction::Ok`] with the managed service ids and
    ///    [`Store::count_claimable_tasks`] over `scopes` (the search space, already
    ///    intersected with the token) and `protocols`.
    ///
    /// Protocol names are validated first ([`StoreError::Invalid`]).
    pub async fn compute_manager_instruction(
        &self,
        id: &ComputeManagerId,
        scopes: &[Scope],
        protocols: &[String],
        forgive_seconds: i64,
        max_failures: i64,
    ) -> Result<ManagerInstruction> {
        let protocols = if protocols.is_empty() { None } else { protocol_filter(Some(protocols))? };
        let forgive = cutoff(crate::now_micros(), forgive_seconds, "the failure forgive time")?;
        let mut tx = self.begin_write().await?;
        let found = sqlx::query("SELECT id FROM compute_manager WHERE name = $1 AND uuid = $2")
            .bind(id.name())
            .bind(id.uuid())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Ok(ManagerInstruction::Shutdown { message: MANAGER_NOT_FOUND.into() });
        }
        let rows = sqlx::query(
            "SELECT cs.id, cs.identifier, \
             (SELECT COUNT(*) FROM compute_service_failure f WHERE f.service_id = cs.id AND f.failed_at > $2), \
             (SELECT COUNT(*) FROM compute_service_failure f WHERE f.service_id = cs.id AND f.failed_at <= $2) \
             FROM compute_service cs WHERE cs.manager_name = $1 ORDER BY cs.identifier",
        )
        .bind(id.name())
        .bind(forgive)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut all_ok = true;
        for r in &rows {
            ids.push(service_id(&get_str(r, 1)?)?);
            all_ok &= can_claim_row(&mut tx, (get_i64(r, 0)?, get_i64(r, 2)?, get_i64(r, 3)?), forgive, max_failures).await?;
        }
        if !all_ok {
            tx.commit().await?;
            return Ok(ManagerInstruction::Skip { compute_service_ids: ids });
        }
        let num_tasks = count_claimable(&mut tx, self.backend, &minimise(scopes), protocols.as_deref()).await?;
        tx.commit().await?;
        Ok(ManagerInstruction::Ok { compute_service_ids: ids, num_tasks })
    }
}

fn already_registered(status: &str) -> StoreError {
    StoreError::Invalid(format!("ComputeManager with this name is already registered with status {status}"))
}

/// See [`Store::count_claimable_tasks`].
async fn count_claimable(conn: &mut AnyConnection, backend: Backend, scopes: &[Scope], protocols: Option<&[String]>) -> Result<i64> {
    if scopes.is_empty() {
        return Ok(0);
    }
    let mut args = Vec::new();
    let include = scopes_condition("t", scopes, &mut args);
    let protocol_cond = match protocols {
        Some(p) => {
            args.push(Arg::Text(json_array(p.iter().map(String::as_str))));
            format!(
                " AND EXISTS (SELECT 1 FROM transformation f WHERE f.id = t.transformation_id AND f.protocol IN ({}))",
                json_text_list(backend, args.len())
            )
        }
        None => String::new(),
    };
    let sql = dialect(
        backend,
        &format!(
            "SELECT COUNT(*) FROM task t WHERE t.status = 'waiting' AND ({include}) \
             AND EXISTS (SELECT 1 FROM task_action a JOIN network ns ON ns.id = a.network_id WHERE a.task_id = t.id AND ns.state IN ('active', 'inactive')) \
             AND (t.extends_id IS NULL OR EXISTS (SELECT 1 FROM task p WHERE p.id = t.extends_id AND p.status = 'complete')){protocol_cond}"
        ),
    );
    let row = bind(sqlx::query(&sql), &args).fetch_one(&mut *conn).await?;
    get_i64(&row, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_status_messages() {
        assert_eq!(parse_compute_manager_status("OK").unwrap(), ComputeManagerStatus::Ok);
        assert!(
            matches!(parse_compute_manager_status("ok"), Err(StoreError::Invalid(m)) if m == "\"ok\" is not a valid ComputeManagerStatus")
        );
    }
}
