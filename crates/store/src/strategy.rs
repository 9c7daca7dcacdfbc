//! Strategies and their state.
//!
//! A Strategy is an arbitrary gufe object stored in its network's scope; the PROGRESSES
//! edge Strategy → network is the `network_strategy` row, which carries the
//! [`StrategyState`]. `last_iteration` is kept as integer microseconds and rendered the way
//! Python's `isoformat` writes it; `exception` is kept as JSON text `[type, message]`.

use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::hash::python_isoformat;
use alchemiscale_model::status::{StrategyMode, StrategyStatus, StrategyTaskScaling};
use alchemiscale_model::ScopedKey;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use crate::db::{get_i64, get_opt_i64, get_opt_str, get_str};
use crate::error::{Result, StoreError};
use crate::networks::{insert_chain_objects, object_chain};
use crate::tasks::network_row_id;
use crate::Store;

/// The state carried by a network's PROGRESSES edge. Serialises to the
/// object (same member order); absent members deserialise to their
/// defaults and unknown members are ignored, as U58 requires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StrategyState {
    pub mode: StrategyMode,
    pub status: StrategyStatus,
    pub iterations: i64,
    /// Seconds; positive.
    pub sleep_interval: i64,
    /// Kept to the microsecond; on the wire Python `isoformat` text (or null).
    #[serde(with = "isoformat_opt")]
    pub last_iteration: Option<DateTime<Utc>>,
    pub last_iteration_result_count: i64,
    /// Positive.
    pub max_tasks_per_transformation: i64,
    pub task_scaling: StrategyTaskScaling,
    /// `[exception type name, message]`.
    pub exception: Option<(String, String)>,
    pub traceback: Option<String>,
}

impl Default for StrategyState {
    fn default() -> Self {
        StrategyState {
            mode: StrategyMode::Partial,
            status: StrategyStatus::Awake,
            iterations: 0,
            sleep_interval: 3600,
            last_iteration: None,
            last_iteration_result_count: 0,
            max_tasks_per_transformation: 3,
            task_scaling: StrategyTaskScaling::Exponential,
            exception: None,
            traceback: None,
        }
    }
}

impl StrategyState {
    /// The rules upstream's pydantic model enforces beyond types: `sleep_interval` and
    /// `max_tasks_per_transformation` are positive integers.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [("sleep_interval", self.sleep_interval), ("max_tasks_per_transformation", self.max_tasks_per_transformation)]
        {
            if value < 1 {
                return Err(StoreError::Invalid(format!("{field}: Input should be greater than 0 (got {value})")));
            }
        }
        Ok(())
    }
}

/// Serde for `Option<DateTime<Utc>>` as Python `isoformat` text. Reading accepts RFC 3339
/// / ISO 8601 date-times with an offset (or `Z`), and offset-less ones, taken as UTC.
mod isoformat_opt {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &Option<DateTime<Utc>>, s: S) -> std::result::Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&python_isoformat(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<DateTime<Utc>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        parse_datetime(&text).map(Some).ok_or_else(|| serde::de::Error::custom(format!("invalid datetime {text:?}")))
    }
}

/// Parse an ISO 8601 date-time (offset optional, naive = UTC), truncated to microseconds.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    let t = match DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())?
            .and_utc(),
    };
    DateTime::from_timestamp_micros(t.timestamp_micros())
}

pub(crate) const STATE_COLUMNS: &str = "mode, status, iterations, sleep_interval, last_iteration, last_iteration_result_count, \
                             max_tasks_per_transformation, task_scaling, exception, traceback";

/// Overwrite a network's state: the [`STATE_COLUMNS`] as `$1..$10`, the network as `$11`.
pub(crate) const UPDATE_STATE: &str = "UPDATE network_strategy SET mode = $1, status = $2, iterations = $3, sleep_interval = $4, \
     last_iteration = $5, last_iteration_result_count = $6, max_tasks_per_transformation = $7, task_scaling = $8, exception = $9, \
     traceback = $10 WHERE network_id = $11";

fn corrupt(what: &str) -> StoreError {
    StoreError::Invalid(format!("corrupt strategy state in store ({what})"))
}

/// The state from the row's columns `at..at + 10` (in [`STATE_COLUMNS`] order).
pub(crate) fn state_from_row(r: &AnyRow, at: usize) -> Result<StrategyState> {
    let last_iteration = match get_opt_i64(r, at + 4)? {
        None => None,
        Some(us) => Some(DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt("last_iteration"))?),
    };
    let exception = match get_opt_str(r, at + 8)? {
        None => None,
        Some(text) => Some(serde_json::from_str::<(String, String)>(&text).map_err(|_| corrupt("exception"))?),
    };
    Ok(StrategyState {
        mode: get_str(r, at)?.parse().map_err(|_| corrupt("mode"))?,
        status: get_str(r, at + 1)?.parse().map_err(|_| corrupt("status"))?,
        iterations: get_i64(r, at + 2)?,
        sleep_interval: get_i64(r, at + 3)?,
        last_iteration,
        last_iteration_result_count: get_i64(r, at + 5)?,
        max_tasks_per_transformation: get_i64(r, at + 6)?,
        task_scaling: get_str(r, at + 7)?.parse().map_err(|_| corrupt("task_scaling"))?,
        exception,
        traceback: get_opt_str(r, at + 9)?,
    })
}

/// Bind the state's columns in [`STATE_COLUMNS`] order.
pub(crate) fn bind_state<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    s: &StrategyState,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>> {
    let exception = match &s.exception {
        None => None,
        Some(e) => Some(serde_json::to_string(e).map_err(|e| StoreError::Invalid(format!("cannot encode exception: {e}")))?),
    };
    q = q
        .bind(s.mode.as_str())
        .bind(s.status.as_str())
        .bind(s.iterations)
        .bind(s.sleep_interval)
        .bind(s.last_iteration.map(|t| t.timestamp_micros()))
        .bind(s.last_iteration_result_count)
        .bind(s.max_tasks_per_transformation)
        .bind(s.task_scaling.as_str())
        .bind(exception)
        .bind(s.traceback.clone());
    Ok(q)
}

/// Delete strategy object `id` if nothing uses it any more: no PROGRESSES edge, no
/// reference from another object, and no role as a network, network member,
/// transformation or chemical system (a chain may name any stored object as its root).
/// Its outgoing references go with it; the objects they point to are kept (they may be
/// shared, and records are otherwise never deleted).
async fn delete_if_unused(conn: &mut AnyConnection, id: i64) -> Result<()> {
    let used = sqlx::query(
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM network_strategy WHERE strategy_id = $1) \
         OR EXISTS (SELECT 1 FROM gufe_ref WHERE child_id = $1) \
         OR EXISTS (SELECT 1 FROM network WHERE id = $1) \
         OR EXISTS (SELECT 1 FROM network_member WHERE object_id = $1) \
         OR EXISTS (SELECT 1 FROM transformation WHERE id = $1) \
         OR EXISTS (SELECT 1 FROM transformation_system WHERE system_id = $1) \
         OR EXISTS (SELECT 1 FROM network_system WHERE system_id = $1)",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    if !used {
        sqlx::query("DELETE FROM gufe_ref WHERE parent_id = $1").bind(id).execute(&mut *conn).await?;
        sqlx::query("DELETE FROM gufe_object WHERE id = $1").bind(id).execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Set (or, with `chain` None, remove) a network's Strategy (route
    /// U58), in one transaction: the existing PROGRESSES edge is removed and its Strategy
    /// record deleted if nothing else uses it; then the chain's objects are stored in the
    /// network's scope and linked with `state`. Returns the Strategy's ScopedKey (root key
    /// in the network's scope), or None when removing.
    ///
    /// Errors ([`StoreError::Invalid`]): a key that is not a network's (upstream: a server
    /// error), an invalid `state`, or — when setting — an unknown network.
    /// Removing from an unknown network is a no-op returning None (as upstream).
    pub async fn set_network_strategy(
        &self,
        network: &ScopedKey,
        chain: Option<&KeyedChain>,
        state: StrategyState,
    ) -> Result<Option<ScopedKey>> {
        if network.qualname() != "AlchemicalNetwork" {
            return Err(StoreError::Invalid("`network` ScopedKey does not correspond to an `AlchemicalNetwork`".into()));
        }
        state.validate()?;
        let mut tx = self.begin_write().await?;
        let Some(net) = network_row_id(&mut tx, network).await? else {
            return match chain {
                None => Ok(None),
                Some(_) => Err(StoreError::Invalid(format!("no such network {network}"))),
            };
        };
        let old = sqlx::query("SELECT strategy_id FROM network_strategy WHERE network_id = $1").bind(net).fetch_optional(&mut *tx).await?;
        if let Some(row) = old {
            let old_id = get_i64(&row, 0)?;
            sqlx::query("DELETE FROM network_strategy WHERE network_id = $1").bind(net).execute(&mut *tx).await?;
            delete_if_unused(&mut tx, old_id).await?;
        }
        let Some(chain) = chain else {
            tx.commit().await?;
            return Ok(None);
        };
        let ids = insert_chain_objects(&mut tx, self.backend, chain, network.scope()).await?;
        let root = &chain.root().key;
        let strategy_id =
            *ids.get(root.as_str()).ok_or_else(|| StoreError::Invalid(format!("strategy object {root} vanished while storing it")))?;
        let sql = format!("INSERT INTO network_strategy (network_id, strategy_id, {STATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)");
        bind_state(sqlx::query(&sql).bind(net).bind(strategy_id), &state)?.execute(&mut *tx).await?;
        tx.commit().await?;
        let sk =
            ScopedKey::new(root.clone(), network.scope().clone()).map_err(|e| StoreError::Invalid(format!("invalid strategy key: {e}")))?;
        Ok(Some(sk))
    }

    /// The network's Strategy as keyed-chain JSON text (route U59), or None if the
    /// network has none (or is unknown, or the key is not a network's).
    pub async fn get_network_strategy(&self, network: &ScopedKey) -> Result<Option<String>> {
        let mut conn = self.reader().acquire().await?;
        let Some(net) = network_row_id(&mut conn, network).await? else { return Ok(None) };
        let Some(row) =
            sqlx::query("SELECT strategy_id FROM network_strategy WHERE network_id = $1").bind(net).fetch_optional(&mut *conn).await?
        else {
            return Ok(None);
        };
        Ok(Some(object_chain(&mut conn, get_i64(&row, 0)?).await?))
    }

    /// The network's StrategyState (route U60), or None without a strategy.
    pub async fn get_strategy_state(&self, network: &ScopedKey) -> Result<Option<StrategyState>> {
        let mut conn = self.reader().acquire().await?;
        let Some(net) = network_row_id(&mut conn, network).await? else { return Ok(None) };
        let row = sqlx::query(&format!("SELECT {STATE_COLUMNS} FROM network_strategy WHERE network_id = $1"))
            .bind(net)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| state_from_row(&r, 0)).transpose()
    }

    /// The network's strategy status (route U61), or None without a strategy.
    pub async fn get_strategy_status(&self, network: &ScopedKey) -> Result<Option<StrategyStatus>> {
        Ok(self.get_strategy_state(network).await?.map(|s| s.status))
    }

    /// Wake a network's strategy (route U62): status `awake`, `exception` and `traceback`
    /// cleared, everything else kept. Returns the network key, or None without a strategy.
    pub async fn wake_strategy(&self, network: &ScopedKey) -> Result<Option<ScopedKey>> {
        let mut tx = self.begin_write().await?;
        let Some(net) = network_row_id(&mut tx, network).await? else { return Ok(None) };
        let n = sqlx::query("UPDATE network_strategy SET status = $1, exception = NULL, traceback = NULL WHERE network_id = $2")
            .bind(StrategyStatus::Awake.as_str())
            .bind(net)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((n > 0).then(|| network.clone()))
    }

    /// Overwrite every field of a network's StrategyState (the strategist's write). Returns the network key, or None without a strategy; an invalid state is
    /// [`StoreError::Invalid`].
    pub async fn replace_strategy_state(&self, network: &ScopedKey, state: StrategyState) -> Result<Option<ScopedKey>> {
        state.validate()?;
        let mut tx = self.begin_write().await?;
        let Some(net) = network_row_id(&mut tx, network).await? else { return Ok(None) };
        let n = bind_state(sqlx::query(UPDATE_STATE), &state)?.bind(net).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok((n > 0).then(|| network.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn defaults_serialise_as_api_object() {
        let text = serde_json::to_string(&StrategyState::default()).unwrap();
        assert_eq!(
            text,
            r#"{"mode":"partial","status":"awake","iterations":0,"sleep_interval":3600,"last_iteration":null,"last_iteration_result_count":0,"max_tasks_per_transformation":3,"task_scaling":"exponential","exception":null,"traceback":null}"#
        );
        let back: StrategyState = serde_json::from_str("{}").unwrap();
        assert_eq!(back, StrategyState::default());
    }

    #[test]
    fn state_round_trips_with_isoformat_and_exception_pair() {
        let t = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::microseconds(123456);
        let s = StrategyState {
            status: StrategyStatus::Error,
            last_iteration: Some(t),
            exception: Some(("ValueError".into(), "bad".into())),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["last_iteration"], "2025-03-01T12:00:00.123456+00:00");
        assert_eq!(v["exception"], serde_json::json!(["ValueError", "bad"]));
        let back: StrategyState = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        let z: StrategyState = serde_json::from_str(r#"{"last_iteration": "2025-03-01T12:00:00Z", "bogus": 1}"#).unwrap();
        assert_eq!(z.last_iteration, Some(Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()));
        let naive: StrategyState = serde_json::from_str(r#"{"last_iteration": "2025-03-01T12:00:00.5"}"#).unwrap();
        assert_eq!(naive.last_iteration.unwrap().timestamp_micros() % 1_000_000, 500_000);
        assert!(serde_json::from_str::<StrategyState>(r#"{"mode": "sometimes"}"#).is_err());
        assert!(serde_json::from_str::<StrategyState>(r#"{"last_iteration": "yesterday"}"#).is_err());
        assert!(serde_json::from_str::<StrategyState>(r#"{"exception": ["only one"]}"#).is_err());
    }

    #[test]
    fn validation() {
        assert!(StrategyState::default().validate().is_ok());
        assert!(StrategyState { sleep_interval: 0, ..Default::default() }.validate().is_err());
        assert!(StrategyState { max_tasks_per_transformation: -1, ..Default::default() }.validate().is_err());
    }
}
