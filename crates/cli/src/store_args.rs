//! Options that select the state store, shared by every command that uses it.

use std::path::PathBuf;

use alchemiscale_store::{resolve_store_url, Store, StoreLocation, StoreOptions};
use anyhow::{bail, Context};
use clap::Args;

/// Where the state store lives.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// State store URL: sqlite:///path/to/state.db or postgres://user@host:port/dbname.
    /// Default: <data-dir>/state.db (SQLite).
    #[arg(long, env = "ALCHEMISCALE_STATE_URL", help_heading = "State store")]
    pub url: Option<String>,
    /// PostgreSQL user, if not given in the URL.
    #[arg(long, env = "ALCHEMISCALE_STATE_USER", help_heading = "State store")]
    pub user: Option<String>,
    /// PostgreSQL password, if not given in the URL.
    #[arg(long, env = "ALCHEMISCALE_STATE_PASSWORD", hide_env_values = true, help_heading = "State store")]
    pub password: Option<String>,
    /// PostgreSQL database name (replaces the one in the URL).
    #[arg(long, env = "ALCHEMISCALE_STATE_DBNAME", help_heading = "State store")]
    pub dbname: Option<String>,
    /// SQLite durability: FULL (fsync every commit), NORMAL (safe against process crashes,
    /// may lose the last commits on power loss), OFF.
    #[arg(long, env = "ALCHEMISCALE_SQLITE_SYNCHRONOUS", default_value = "FULL", help_heading = "State store")]
    pub sqlite_synchronous: String,
    /// Connections to the state store.
    #[arg(long, env = "ALCHEMISCALE_STATE_MAX_CONNECTIONS", default_value_t = 8, help_heading = "State store")]
    pub max_connections: u32,
    /// How long a request waits for a free connection (or for the database to come back)
    /// before it is answered 503.
    #[arg(long, env = "ALCHEMISCALE_STATE_POOL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "State store")]
    pub pool_timeout: std::time::Duration,
}

impl StoreArgs {
    /// Resolve the location; explains itself when only upstream's NEO4J_URL is set.
    pub fn location(&self, data_dir: &std::path::Path) -> anyhow::Result<StoreLocation> {
        if self.url.as_deref().unwrap_or("").is_empty() {
            if let Ok(neo) = std::env::var("NEO4J_URL") {
                if !neo.is_empty() {
                    bail!(
                        "NEO4J_URL is set ({neo}) but ALCHEMISCALE_STATE_URL / --url is not.\n{}",
                        alchemiscale_store::url_neo4j_message()
                    );
                }
            }
        }
        Ok(resolve_store_url(self.url.as_deref(), data_dir, self.user.as_deref(), self.password.as_deref(), self.dbname.as_deref())?)
    }

    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.max_connections,
            sqlite_synchronous: self.sqlite_synchronous.clone(),
            acquire_timeout: self.pool_timeout.max(std::time::Duration::from_millis(100)),
        }
    }

    /// Connect (creating the SQLite file if needed) without touching the schema.
    pub async fn connect(&self, data_dir: &std::path::Path) -> anyhow::Result<Store> {
        let location = self.location(data_dir)?;
        Store::connect(&location, &self.options()).await.with_context(|| format!("cannot open the state store at {}", location.redacted()))
    }

    /// Connect and require a current schema; an SQLite store with no schema yet is
    /// initialised (creating the embedded store is always safe).
    pub async fn connect_ready(&self, data_dir: &std::path::Path) -> anyhow::Result<Store> {
        let store = self.connect(data_dir).await?;
        if store.backend() == alchemiscale_store::Backend::Sqlite
            && store.schema_status().await? == alchemiscale_store::SchemaStatus::Uninitialized
        {
            store.init().await?;
        }
        store.require_current_schema().await?;
        Ok(store)
    }
}

/// The data directory: `--data-dir`, `ALCHEMISCALE_DATA_DIR`, default `./alchemiscale-data`.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory for the embedded state store (state.db), the local object store and
    /// generated credentials.
    #[arg(long, global = true, env = "ALCHEMISCALE_DATA_DIR", default_value = "alchemiscale-data")]
    pub data_dir: PathBuf,
}

/// Where results live: a local directory by default, S3 when a bucket is
/// given.
#[derive(Debug, Clone, Args)]
pub struct ObjectArgs {
    /// Local object-store directory. Default: <data-dir>/objects.
    #[arg(long, env = "ALCHEMISCALE_OBJECTS_DIR", help_heading = "Object store")]
    pub objects_dir: Option<PathBuf>,
    /// S3 bucket; when set, results go to S3 instead of the local directory.
    #[arg(long, env = "AWS_S3_BUCKET", help_heading = "Object store")]
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket (upstream deployments use `objectstore`).
    #[arg(long, env = "AWS_S3_PREFIX", default_value = "", help_heading = "Object store")]
    pub s3_prefix: String,
    #[command(flatten)]
    pub s3: S3AccessArgs,
}

/// How to reach S3 (region, credentials, endpoint): for results and for backups.
#[derive(Debug, Clone, Default, Args)]
pub struct S3AccessArgs {
    #[arg(long, env = "AWS_DEFAULT_REGION", help_heading = "S3 access")]
    pub default_region: Option<String>,
    /// Unset: ambient credentials (instance role, …).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", help_heading = "S3 access")]
    pub access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true, help_heading = "S3 access")]
    pub secret_access_key: Option<String>,
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true, help_heading = "S3 access")]
    pub session_token: Option<String>,
    /// A custom S3 endpoint (MinIO, moto, …).
    #[arg(long, env = "AWS_ENDPOINT_URL", help_heading = "S3 access")]
    pub s3_endpoint: Option<String>,
}

impl S3AccessArgs {
    /// An S3 configuration for `bucket` and `prefix` with these access settings.
    pub fn config(&self, bucket: &str, prefix: &str) -> alchemiscale_objects::S3Config {
        alchemiscale_objects::S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: self.default_region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            endpoint: self.s3_endpoint.clone(),
        }
    }
}

impl ObjectArgs {
    pub fn config(&self, data_dir: &std::path::Path) -> alchemiscale_objects::ObjectStoreConfig {
        match self.s3_bucket.as_deref().filter(|b| !b.is_empty()) {
            Some(bucket) => alchemiscale_objects::ObjectStoreConfig::S3(self.s3.config(bucket, &self.s3_prefix)),
            None => alchemiscale_objects::ObjectStoreConfig::Local {
                root: self.objects_dir.clone().unwrap_or_else(|| data_dir.join("objects")),
            },
        }
    }

    pub fn open(&self, data_dir: &std::path::Path) -> anyhow::Result<alchemiscale_objects::Objects> {
        Ok(alchemiscale_objects::Objects::open(&self.config(data_dir))?)
    }
}
