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

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e.to_string())
            }
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
