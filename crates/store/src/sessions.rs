//! Web-console sessions: created at login, looked up on every console request, ended at
//! logout, when they expire, or when their identity is removed, disabled or re-keyed.
//!
//! The session id handed to the browser is 32 random bytes; the store keeps only its
//! SHA-256, so neither a dump nor a read of the table yields a usable session. Each session
//! has its own CSRF token, which every state-changing console form carries.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::{get_i64, get_opt_i64, get_str};
use crate::error::{Result, StoreError};
use crate::identities::{validate_identifier, IdentityKind};
use crate::{now_micros, Store};

/// A live console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub kind: IdentityKind,
    pub identifier: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// Expiry, µs since the epoch.
    pub expires: i64,
    /// The identity's scopes as stored now (not as they were at login).
    pub scopes: Vec<String>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

impl Store {
    /// Open a session for an identity that exists; returns the session id for the cookie.
    /// Expired sessions of every identity are removed on the way.
    pub async fn create_console_session(&self, kind: IdentityKind, identifier: &str, ttl_micros: i64) -> Result<String> {
        validate_identifier(identifier)?;
        let now = now_micros();
        let id = random_hex();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM console_session WHERE expires <= $1").bind(now).execute(&mut *tx).await?;
        let exists = sqlx::query("SELECT id FROM identity WHERE kind = $1 AND identifier = $2")
            .bind(kind.as_str())
            .bind(identifier)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query("INSERT INTO console_session (id_sha256, kind, identifier, csrf, created, expires) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(digest(&id))
            .bind(kind.as_str())
            .bind(identifier)
            .bind(random_hex())
            .bind(now)
            .bind(now.saturating_add(ttl_micros))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The live session with this id: None when unknown, expired, or when its identity is
    /// gone, disabled or expired.
    pub async fn console_session(&self, id: &str) -> Result<Option<ConsoleSession>> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let now = now_micros();
        let row = sqlx::query(
            "SELECT s.kind, s.identifier, s.csrf, s.expires, i.id, i.disabled, i.expires FROM console_session s \
             JOIN identity i ON i.kind = s.kind AND i.identifier = s.identifier WHERE s.id_sha256 = $1",
        )
        .bind(digest(id))
        .fetch_optional(self.reader())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (expires, disabled, identity_expires) = (get_i64(&row, 3)?, get_i64(&row, 5)? != 0, get_opt_i64(&row, 6)?);
        if expires <= now || disabled || identity_expires.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        let kind: IdentityKind = get_str(&row, 0)?.parse().map_err(|_| StoreError::Invalid("stored session kind".into()))?;
        let scopes = sqlx::query("SELECT scope FROM identity_scope WHERE identity_id = $1 ORDER BY position")
            .bind(get_i64(&row, 4)?)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| get_str(r, 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ConsoleSession { kind, identifier: get_str(&row, 1)?, csrf: get_str(&row, 2)?, expires, scopes }))
    }

    /// End one session (logout). Unknown ids are ignored.
    pub async fn end_console_session(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM console_session WHERE id_sha256 = $1").bind(digest(id)).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// End every session of an identity, inside the caller's transaction (identity removed or
/// its key replaced).
pub(crate) async fn end_identity_sessions(conn: &mut sqlx::AnyConnection, kind: IdentityKind, identifier: &str) -> Result<()> {
    sqlx::query("DELETE FROM console_session WHERE kind = $1 AND identifier = $2")
        .bind(kind.as_str())
        .bind(identifier)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
