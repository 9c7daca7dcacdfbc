use alchemiscale_model::chain::ChainError;

/// Everything the store can refuse or fail with. The API maps these to status codes:
/// `NotFound`/`Invalid` → 400, `Unavailable` → 503, `Database` → 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object addressed does not exist (upstream text: `'No such object in database'`).
    #[error("No such object in database")]
    NotFound,
    /// Input violates a domain rule; the message is meant for the user.
    #[error("{0}")]
    Invalid(String),
    /// A uniqueness rule would be broken.
    #[error("{0}")]
    Conflict(String),
    /// A submitted keyed chain is malformed or violates a structural rule.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The database cannot be reached (or timed out handing out a connection).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The schema is missing or not the one this binary expects.
    #[error("{0}")]
    Schema(String),
    /// A dump file is unreadable, truncated or fails its checksum.
    #[error("{0}")]
    Dump(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

/// SQLSTATEs that say the database (or the connection to it) is away for now rather than
/// that the statement is wrong: what a PostgreSQL restart, failover or overload produces.
///
/// * class 08, connection exceptions;
/// * `57000` and `57P0x`, operator intervention: `57P01` admin_shutdown (a fast or
///   immediate shutdown terminates every session: the in-flight statements of a restart
///   fail with it), `57P02` crash_shutdown, `57P03` cannot_connect_now (starting up or
///   shutting down), `57P04` database_dropped, `57P05` idle_session_timeout. Not `57014`
///   query_canceled (a statement timeout or a cancel: the statement's own fault);
/// * class 53, insufficient resources (`53300` too_many_connections, `53100` disk_full,
///   `53200` out_of_memory).
pub(crate) fn sqlstate_unavailable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code == "57000" || code.starts_with("57P")
}

/// Whether a sqlx error means the database cannot be reached or is going away (a 503,
/// which clients retry) rather than a failed statement. Measured on a PostgreSQL restart
/// (`pg_ctl -m fast`): statements in flight and the first statement on a connection
/// taken before the shutdown fail with `Database` 57P01; later ones on that connection
/// with `Io` (UnexpectedEof); acquiring while the server is down times out in the pool
/// (`PoolTimedOut`; the pool retries refused connections and 57P03 meanwhile).
/// `Protocol` is what a connection cut mid-message reads; `WorkerCrashed` a SQLite
/// connection's worker thread gone.
pub(crate) fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| sqlstate_unavailable(&c)),
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            e if sqlx_unavailable(e) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_string()),
            _ => StoreError::Database(e),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Schema(e.to_string())
    }
}

impl StoreError {
    /// The same error again, for every request of a failed batch (sqlx errors are not
    /// `Clone`; they are carried over as their message).
    pub(crate) fn replicate(&self) -> StoreError {
        match self {
            StoreError::NotFound => StoreError::NotFound,
            StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Schema(m) => StoreError::Schema(m.clone()),
            StoreError::Dump(m) => StoreError::Dump(m.clone()),
            other => StoreError::Database(sqlx::Error::Protocol(other.to_string())),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_sqlstates() {
        for code in ["08000", "08003", "08006", "08001", "08004", "08P01", "57000", "57P01", "57P02", "57P03", "57P05", "53300", "53100"] {
            assert!(sqlstate_unavailable(code), "{code}");
        }
        for code in ["57014", "23505", "40P01", "40001", "42P01", "22P02", "XX000"] {
            assert!(!sqlstate_unavailable(code), "{code}");
        }
    }

    #[test]
    fn unavailable_errors() {
        let unavailable = |e: sqlx::Error| matches!(StoreError::from(e), StoreError::Unavailable(_));
        assert!(unavailable(sqlx::Error::PoolTimedOut));
        assert!(unavailable(sqlx::Error::Protocol("unexpected message".into())));
        assert!(unavailable(sqlx::Error::WorkerCrashed));
        assert!(unavailable(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))));
        assert!(!unavailable(sqlx::Error::RowNotFound));
        assert!(!unavailable(sqlx::Error::ColumnNotFound("x".into())));
    }
}
