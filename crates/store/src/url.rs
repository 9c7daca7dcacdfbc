//! Where the state store lives: resolving `--url` / `ALCHEMISCALE_STATE_URL`,
//! `--user`, `--password`, `--dbname` and the data directory into one location.

use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// A resolved store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite database file.
    Sqlite { path: PathBuf },
    /// A PostgreSQL connection URL (credentials and database name applied).
    Postgres { url: String },
}

impl StoreLocation {
    /// The URL handed to sqlx.
    pub fn url(&self) -> String {
        match self {
            StoreLocation::Sqlite { path } => format!("sqlite://{}?mode=rwc", path.display()),
            StoreLocation::Postgres { url } => url.clone(),
        }
    }

    /// The location with any password removed, for logs and messages.
    pub fn redacted(&self) -> String {
        match self {
            StoreLocation::Sqlite { path } => path.display().to_string(),
            StoreLocation::Postgres { url } => match ::url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    u.to_string()
                }
                Err(_) => "postgres://(unparsable url)".to_string(),
            },
        }
    }
}

/// Resolve the store location.
///
/// * no URL: `<data_dir>/state.db` (SQLite);
/// * `sqlite:///abs/path.db`, `sqlite://rel/path.db` or `sqlite:path.db`: that file;
/// * `postgres://…` / `postgresql://…`: PostgreSQL; `user`, `password` fill in what the
///   URL lacks and `dbname` replaces its database;
/// * `bolt://`, `neo4j://` …: refused with an explanation (Neo4j is not supported).
pub fn resolve_store_url(
    url: Option<&str>,
    data_dir: &Path,
    user: Option<&str>,
    password: Option<&str>,
    dbname: Option<&str>,
) -> Result<StoreLocation> {
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
        return Ok(StoreLocation::Sqlite { path: data_dir.join("state.db") });
    };
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::Invalid(format!("'{url}' does not name an SQLite database file")));
        }
        return Ok(StoreLocation::Sqlite { path: PathBuf::from(path) });
    }
    let scheme = url.split("://").next().unwrap_or_default().to_ascii_lowercase();
    match scheme.as_str() {
        "postgres" | "postgresql" => {
            let mut u = ::url::Url::parse(url).map_err(|e| StoreError::Invalid(format!("invalid PostgreSQL URL: {e}")))?;
            if let Some(user) = user.filter(|s| !s.is_empty()) {
                if u.username().is_empty() {
                    u.set_username(user).map_err(|_| StoreError::Invalid("cannot set the user on this URL".into()))?;
                }
            }
            if let Some(pw) = password.filter(|s| !s.is_empty()) {
                if u.password().is_none() {
                    u.set_password(Some(pw)).map_err(|_| StoreError::Invalid("cannot set the password on this URL".into()))?;
                }
            }
            if let Some(db) = dbname.filter(|s| !s.is_empty()) {
                u.set_path(&format!("/{db}"));
            }
            Ok(StoreLocation::Postgres { url: u.to_string() })
        }
        "bolt" | "neo4j" | "bolt+s" | "neo4j+s" | "bolt+ssc" | "neo4j+ssc" => Err(StoreError::Invalid(neo4j_message())),
        _ => Err(StoreError::Invalid(format!(
            "unsupported store URL '{url}': use sqlite:///path/to/state.db or postgres://user@host/dbname"
        ))),
    }
}

/// Why a Neo4j URL is refused, and what to do instead.
pub fn neo4j_message() -> String {
    "Neo4j is not supported by alchemiscale-rs: its state store is SQLite (embedded default) or PostgreSQL. \
     Set --url / ALCHEMISCALE_STATE_URL to sqlite:///path/state.db or postgres://user@host/dbname. \
     To move an existing deployment, see 'Migrating from upstream alchemiscale' in README.md \
     (export networks with the Python client, re-submit them, and use `alchemiscale database dump/load` \
     to move between our own backends)."
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution() {
        let d = Path::new("/data");
        assert_eq!(resolve_store_url(None, d, None, None, None).unwrap(), StoreLocation::Sqlite { path: "/data/state.db".into() });
        assert_eq!(
            resolve_store_url(Some("sqlite:///var/x.db"), d, None, None, None).unwrap(),
            StoreLocation::Sqlite { path: "/var/x.db".into() }
        );
        assert_eq!(resolve_store_url(Some("sqlite:rel.db"), d, None, None, None).unwrap(), StoreLocation::Sqlite { path: "rel.db".into() });
        let pg = resolve_store_url(Some("postgres://host:5433/db1"), d, Some("bob"), Some("p@ss"), Some("db2")).unwrap();
        assert_eq!(pg, StoreLocation::Postgres { url: "postgres://bob:p%40ss@host:5433/db2".into() });
        assert_eq!(pg.redacted(), "postgres://bob:***@host:5433/db2");
        let e = resolve_store_url(Some("bolt://neo4j:7687"), d, None, None, None).unwrap_err();
        assert!(e.to_string().contains("Neo4j is not supported"));
        assert!(resolve_store_url(Some("mysql://x"), d, None, None, None).is_err());
        assert!(resolve_store_url(Some("sqlite://"), d, None, None, None).is_err());
    }
}
