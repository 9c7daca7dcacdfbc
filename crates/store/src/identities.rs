//! Credentialed identities: user, compute and admin identities, their
//! keys and their scopes.
//!
//! Keys are hashed with Argon2id. Upstream bcrypt hashes (`$2b$…`, cost 12) are still
//! accepted when verifying — using the first 72 bytes of the key, as upstream does — so
//! identities migrated from an upstream deployment keep working. Both verifications are
//! constant-time in the key.
//!
//! Deliberate changes from upstream (each listed in docs/compatibility.md):
//! * re-adding an identity keeps nothing by default but the caller is told it existed,
//!   and may keep its scopes (`keep_scopes`);
//! * granting or revoking scopes of an identity that does not exist is an error;
//! * `disabled` and `expires` are enforced by [`Store::authenticate`].

use std::fmt;
use std::str::FromStr;

use alchemiscale_model::Scope;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::db::{get_i64, get_opt_i64, get_opt_str, get_str};
use crate::error::{Result, StoreError};
use crate::{now_micros, Store};

/// Which API an identity authenticates against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// Users of the user-facing API.
    User,
    /// Compute services and compute managers (compute API).
    Compute,
    /// Users of the user-facing API with administrative rights.
    Admin,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::User => "user",
            IdentityKind::Compute => "compute",
            IdentityKind::Admin => "admin",
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IdentityKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "user" => Ok(IdentityKind::User),
            "compute" => Ok(IdentityKind::Compute),
            "admin" => Ok(IdentityKind::Admin),
            _ => Err(StoreError::Invalid(format!("'{s}' is not an identity type (user, compute, admin)"))),
        }
    }
}

/// A stored identity (without its key hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityKind,
    pub identifier: String,
    pub disabled: bool,
    /// Expiry as microseconds since the epoch.
    pub expires: Option<i64>,
    pub email: Option<String>,
    pub full_name: Option<String>,
    /// Canonical scope strings, in the order granted.
    pub scopes: Vec<String>,
}

/// Keys are limited like upstream: at most 4096 characters, no NUL.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::Invalid("key must not be empty".into()));
    }
    if key.chars().count() > 4096 {
        return Err(StoreError::Invalid("key must be at most 4096 characters".into()));
    }
    if key.contains('\0') {
        return Err(StoreError::Invalid("key must not contain NUL characters".into()));
    }
    Ok(())
}

/// Identifiers appear in URL paths: non-empty, at most 256 characters, no `/`, no
/// whitespace or control characters.
pub fn validate_identifier(identifier: &str) -> Result<()> {
    if identifier.is_empty() || identifier.chars().count() > 256 {
        return Err(StoreError::Invalid("identifier must be 1 to 256 characters".into()));
    }
    if identifier.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Invalid(format!("identifier {identifier:?} must not contain '/', whitespace or control characters")));
    }
    Ok(())
}

/// Hash a key with Argon2id (PHC string format).
pub fn hash_key(key: &str) -> Result<String> {
    validate_key(key)?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(key.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Invalid(format!("cannot hash key: {e}")))
}

/// Check `key` against a stored hash: Argon2 (ours) or bcrypt (migrated from upstream).
pub fn verify_key(key: &str, stored_hash: &str) -> bool {
    if validate_key(key).is_err() {
        return false;
    }
    if stored_hash.starts_with("$2") {
        // upstream verification truncates the UTF-8 key to 72 bytes
        let bytes = key.as_bytes();
        let truncated = &bytes[..bytes.len().min(72)];
        return bcrypt::verify(truncated, stored_hash).unwrap_or(false);
    }
    match PasswordHash::new(stored_hash) {
        Ok(parsed) => Argon2::default().verify_password(key.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the identity does not exist, so that unknown and
/// known identifiers take the same time to refuse.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_key("not-a-real-key").expect("hash"))
}

/// The warning both the CLI and the console give when `add` replaced an existing
/// identity's key.
pub fn replaced_identity_warning(kind: IdentityKind, identifier: &str, keep_scopes: bool) -> String {
    let what = if keep_scopes { "its scopes were kept" } else { "its scopes were removed (use --keep-scopes to keep them)" };
    format!("{kind} identity '{identifier}' already existed; its key was replaced and {what}")
}

impl Store {
    /// Create an identity, or replace the key of an existing one. Returns true if it
    /// already existed. Its scopes are reset to none unless `keep_scopes`.
    pub async fn add_identity(&self, kind: IdentityKind, identifier: &str, hashed_key: &str, keep_scopes: bool) -> Result<bool> {
        validate_identifier(identifier)?;
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query("SELECT id FROM identity WHERE kind = $1 AND identifier = $2")
            .bind(kind.as_str())
            .bind(identifier)
            .fetch_optional(&mut *tx)
            .await?;
        let existed = match existing {
            Some(row) => {
                let id = get_i64(&row, 0)?;
                sqlx::query("UPDATE identity SET hashed_key = $1, disabled = 0, expires = NULL WHERE id = $2")
                    .bind(hashed_key)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if !keep_scopes {
                    sqlx::query("DELETE FROM identity_scope WHERE identity_id = $1").bind(id).execute(&mut *tx).await?;
                }
                // a new key ends the console sessions opened with the old one
                crate::sessions::end_identity_sessions(&mut tx, kind, identifier).await?;
                true
            }
            None => {
                sqlx::query("INSERT INTO identity (kind, identifier, hashed_key, disabled) VALUES ($1, $2, $3, 0)")
                    .bind(kind.as_str())
                    .bind(identifier)
                    .bind(hashed_key)
                    .execute(&mut *tx)
                    .await?;
                false
            }
        };
        tx.commit().await?;
        Ok(existed)
    }

    /// Delete an identity; returns whether it existed.
    pub async fn remove_identity(&self, kind: IdentityKind, identifier: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT id FROM identity WHERE kind = $1 AND identifier = $2")
            .bind(kind.as_str())
            .bind(identifier)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(false) };
        let id = get_i64(&row, 0)?;
        sqlx::query("DELETE FROM identity_scope WHERE identity_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM identity WHERE id = $1").bind(id).execute(&mut *tx).await?;
        crate::sessions::end_identity_sessions(&mut tx, kind, identifier).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Identifiers of one kind, sorted.
    pub async fn list_identities(&self, kind: IdentityKind) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT identifier FROM identity WHERE kind = $1 ORDER BY identifier")
            .bind(kind.as_str())
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(|r| get_str(r, 0)).collect()
    }

    async fn identity_id(&self, conn: &mut sqlx::AnyConnection, kind: IdentityKind, identifier: &str) -> Result<i64> {
        let row = sqlx::query("SELECT id FROM identity WHERE kind = $1 AND identifier = $2")
            .bind(kind.as_str())
            .bind(identifier)
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(r) => get_i64(&r, 0),
            None => Err(StoreError::Invalid(format!("no {kind} identity '{identifier}' exists"))),
        }
    }

    /// Grant scopes (already-granted ones are left in place). Errors if the identity
    /// does not exist; nothing is applied then.
    pub async fn add_scopes(&self, kind: IdentityKind, identifier: &str, scopes: &[Scope]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let id = self.identity_id(&mut tx, kind, identifier).await?;
        for scope in scopes {
            sqlx::query(
                "INSERT INTO identity_scope (identity_id, position, scope) \
                 SELECT $1, COALESCE(MAX(position), -1) + 1, $2 FROM identity_scope WHERE identity_id = $1 \
                 ON CONFLICT (identity_id, scope) DO NOTHING",
            )
            .bind(id)
            .bind(scope.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Revoke scopes (absent ones are ignored). Errors if the identity does not exist.
    pub async fn remove_scopes(&self, kind: IdentityKind, identifier: &str, scopes: &[Scope]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let id = self.identity_id(&mut tx, kind, identifier).await?;
        for scope in scopes {
            sqlx::query("DELETE FROM identity_scope WHERE identity_id = $1 AND scope = $2")
                .bind(id)
                .bind(scope.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The identity with its scopes and key hash, if it exists.
    pub async fn get_identity(&self, kind: IdentityKind, identifier: &str) -> Result<Option<(Identity, String)>> {
        let row =
            sqlx::query("SELECT id, hashed_key, disabled, expires, email, full_name FROM identity WHERE kind = $1 AND identifier = $2")
                .bind(kind.as_str())
                .bind(identifier)
                .fetch_optional(self.reader())
                .await?;
        let Some(row) = row else { return Ok(None) };
        let id = get_i64(&row, 0)?;
        let scopes = sqlx::query("SELECT scope FROM identity_scope WHERE identity_id = $1 ORDER BY position")
            .bind(id)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| get_str(r, 0))
            .collect::<Result<Vec<_>>>()?;
        let identity = Identity {
            kind,
            identifier: identifier.to_string(),
            disabled: get_i64(&row, 2)? != 0,
            expires: get_opt_i64(&row, 3)?,
            email: get_opt_str(&row, 4)?,
            full_name: get_opt_str(&row, 5)?,
            scopes,
        };
        Ok(Some((identity, get_str(&row, 1)?)))
    }

    /// Scopes of an identity in granted order; None if it does not exist.
    pub async fn list_scopes(&self, kind: IdentityKind, identifier: &str) -> Result<Option<Vec<String>>> {
        Ok(self.get_identity(kind, identifier).await?.map(|(i, _)| i.scopes))
    }

    /// Disable or re-enable an identity, and/or set its expiry (µs since epoch).
    pub async fn set_identity_status(&self, kind: IdentityKind, identifier: &str, disabled: bool, expires: Option<i64>) -> Result<()> {
        let n = sqlx::query("UPDATE identity SET disabled = $1, expires = $2 WHERE kind = $3 AND identifier = $4")
            .bind(disabled as i64)
            .bind(expires)
            .bind(kind.as_str())
            .bind(identifier)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::Invalid(format!("no {kind} identity '{identifier}' exists")));
        }
        Ok(())
    }

    /// Check credentials. Returns the identity if the key matches and the identity is
    /// neither disabled nor expired. The hash check runs on a blocking thread, and an
    /// unknown identifier costs the same as a wrong key.
    pub async fn authenticate(&self, kind: IdentityKind, identifier: &str, key: &str) -> Result<Option<Identity>> {
        let found = if validate_identifier(identifier).is_ok() { self.get_identity(kind, identifier).await? } else { None };
        let hash = found.as_ref().map(|(_, h)| h.clone()).unwrap_or_else(|| dummy_hash().to_string());
        let key = key.to_string();
        let ok = tokio::task::spawn_blocking(move || verify_key(&key, &hash))
            .await
            .map_err(|e| StoreError::Invalid(format!("key verification failed: {e}")))?;
        Ok(match found {
            Some((identity, _)) if ok => {
                let expired = identity.expires.is_some_and(|e| e <= now_micros());
                (!identity.disabled && !expired).then_some(identity)
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_and_verification() {
        let h = hash_key("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_key("s3cret", &h));
        assert!(!verify_key("s3cret!", &h));
        assert!(!verify_key("s3cret", "garbage"));
        assert!(hash_key("").is_err());
        assert!(hash_key("a\0b").is_err());
        assert!(hash_key(&"x".repeat(4097)).is_err());
        // an upstream bcrypt hash, verified on the first 72 bytes of the key
        let long = "k".repeat(100);
        let upstream = bcrypt::hash(&long.as_bytes()[..72], 4).unwrap();
        assert!(verify_key(&long, &upstream));
        assert!(verify_key(&long[..72], &upstream));
        assert!(!verify_key(&long[..71], &upstream));
    }

    #[test]
    fn identifiers() {
        assert!(validate_identifier("alice").is_ok());
        assert!(validate_identifier("alice@example.org").is_ok());
        for bad in ["", "a/b", "a b", "a\nb"] {
            assert!(validate_identifier(bad).is_err(), "{bad:?}");
        }
        assert_eq!("COMPUTE".parse::<IdentityKind>().unwrap(), IdentityKind::Compute);
        assert!("robot".parse::<IdentityKind>().is_err());
    }
}
