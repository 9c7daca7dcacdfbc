//! Leases: one holder at a time for background work shared by several processes.
//!
//! A lease is a named row with a holder and an expiry time. Taking it succeeds when it is
//! free, expired or already held by the same holder; a holder that dies (killed, machine
//! lost) blocks the work only until the lease runs out. Work that commits results checks,
//! inside its own write transaction, that it still holds the lease ([`hold_in`]), so a
//! holder that overran its lease cannot commit over its successor. Works the same on
//! SQLite (several processes on one file) and PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

use crate::db::dialect;
use crate::error::Result;
use crate::Store;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 2)
}

/// Give up `name` inside the caller's write transaction, if `holder` still holds it
/// (unexpired); false if the lease was lost. Work that commits its results this way
/// cannot commit over a successor that took over an expired lease: on PostgreSQL the
/// row stays locked until the transaction ends, and on SQLite writers are serialised.
pub(crate) async fn release_in(conn: &mut AnyConnection, name: &str, holder: &str, now: DateTime<Utc>) -> Result<bool> {
    let n = sqlx::query("DELETE FROM lease WHERE name = $1 AND holder = $2 AND expires > $3")
        .bind(name)
        .bind(holder)
        .bind(now.timestamp_micros())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(n == 1)
}

impl Store {
    /// Take (or renew) the lease `name` for `holder` until `ttl` from now. True if
    /// `holder` holds it afterwards; false if someone else holds an unexpired lease.
    pub async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.acquire_lease_at(name, holder, ttl, Utc::now()).await
    }

    /// [`Store::acquire_lease`] at a given time (tests).
    pub async fn acquire_lease_at(&self, name: &str, holder: &str, ttl: Duration, now: DateTime<Utc>) -> Result<bool> {
        let now = now.timestamp_micros();
        let sql = dialect(
            self.backend,
            "INSERT INTO lease (name, holder, expires) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
             SET holder = excluded.holder, expires = excluded.expires WHERE lease.expires <= $4 OR lease.holder = excluded.holder \
             RETURNING holder",
        );
        let mut tx = self.begin_write().await?;
        let row =
            sqlx::query(&sql).bind(name).bind(holder).bind(now.saturating_add(micros(ttl))).bind(now).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(row.is_some())
    }

    /// Give the lease up if `holder` holds it (otherwise nothing happens).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM lease WHERE name = $1 AND holder = $2").bind(name).bind(holder).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The current holder of an unexpired lease, if any.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT holder FROM lease WHERE name = $1 AND expires > $2")
            .bind(name)
            .bind(Utc::now().timestamp_micros())
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| crate::db::get_str(&r, 0)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_test;

    store_test!(one_holder_at_a_time_until_expiry, |store| async move {
        let t0 = Utc::now();
        let ttl = Duration::from_secs(60);
        assert!(store.acquire_lease_at("work", "a", ttl, t0).await.unwrap());
        // renewing is fine; another holder is refused while it runs
        assert!(store.acquire_lease_at("work", "a", ttl, t0 + chrono::Duration::seconds(10)).await.unwrap());
        assert!(!store.acquire_lease_at("work", "b", ttl, t0 + chrono::Duration::seconds(30)).await.unwrap());
        // other names are independent
        assert!(store.acquire_lease_at("other", "b", ttl, t0).await.unwrap());
        // a's renewal at +10 s runs to +70 s: b takes over after that (a killed holder)
        assert!(!store.acquire_lease_at("work", "b", ttl, t0 + chrono::Duration::seconds(69)).await.unwrap());
        assert!(store.acquire_lease_at("work", "b", ttl, t0 + chrono::Duration::seconds(71)).await.unwrap());
        // releasing by a non-holder does nothing
        store.release_lease("work", "a").await.unwrap();
        assert!(!store.acquire_lease_at("work", "a", ttl, t0 + chrono::Duration::seconds(80)).await.unwrap());
        // a can no longer give it up inside a transaction (it lost it), b can
        let mut tx = store.begin_write().await.unwrap();
        assert!(!release_in(&mut tx, "work", "a", t0 + chrono::Duration::seconds(72)).await.unwrap());
        assert!(release_in(&mut tx, "work", "b", t0 + chrono::Duration::seconds(72)).await.unwrap());
        tx.commit().await.unwrap();
        assert!(store.acquire_lease("work", "a", ttl).await.unwrap());
        store.release_lease("work", "a").await.unwrap();
        assert!(store.acquire_lease("work", "a", ttl).await.unwrap());
        assert_eq!(store.lease_holder("work").await.unwrap().as_deref(), Some("a"));
        assert_eq!(store.lease_holder("nothing").await.unwrap(), None);
    });

    store_test!(concurrent_takers_get_one_lease, |store| async move {
        let mut handles = Vec::new();
        for i in 0..8 {
            let s = store.clone();
            handles.push(tokio::spawn(async move { s.acquire_lease("race", &format!("h{i}"), Duration::from_secs(60)).await.unwrap() }));
        }
        let mut won = 0;
        for h in handles {
            won += h.await.unwrap() as usize;
        }
        assert_eq!(won, 1);
    });
}
