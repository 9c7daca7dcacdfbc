//! The object store: where ProtocolDAGResult blobs live (model.md §5.1).
//!
//! Two backends through the `object_store` crate: a local directory (the embedded
//! default, under the data directory) and S3 (or any S3-protocol server via
//! `AWS_ENDPOINT_URL`). The relative layout is upstream's, so an operator can move an
//! upstream bucket over:
//!
//! ```text
//! <prefix>/protocoldagresult/{org}/{campaign}/{project}/{transformation key}/{results|failures}/{result key}/obj.json.zst
//! ```
//!
//! Every write returns the content's SHA-256, which the state store keeps beside the
//! reference; every read checks it, so an object altered or truncated behind the server's
//! back is reported (naming the object) instead of served. Local writes are atomic
//! (temporary file, then rename); S3 puts are atomic by nature.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("result object '{path}' is missing from the object store")]
    NotFound { path: String },
    #[error("result object '{path}' fails its integrity check: {detail}")]
    Corrupt { path: String, detail: String },
    /// The store cannot be reached or cannot take the write right now (S3 down, disk
    /// full, …): worth retrying later.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    #[error("object store configuration: {0}")]
    Config(String),
}

#[cfg(feature = "testing")]
pub mod testing;

pub type Result<T, E = ObjectError> = std::result::Result<T, E>;

/// S3 settings (cli.md §3.2).
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Custom endpoint (`AWS_ENDPOINT_URL`), e.g. MinIO or moto.
    pub endpoint: Option<String>,
}

/// Which object store to use.
#[derive(Debug, Clone)]
pub enum ObjectStoreConfig {
    /// A directory on the local file system (created if missing).
    Local {
        root: PathBuf,
    },
    S3(S3Config),
}

/// Handle to the object store; cheap to clone.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    description: String,
    /// The directory of the local backend (whose writes `put` makes durable itself).
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

fn classify(path: &str, e: object_store::Error) -> ObjectError {
    match e {
        object_store::Error::NotFound { .. } => ObjectError::NotFound { path: path.to_string() },
        other => ObjectError::Unavailable(format!("{path}: {other}")),
    }
}

/// fsync `file`, then every directory from its parent up to `root` (new directory entries
/// are durable only once their directory is synced).
fn sync_path(root: &std::path::Path, file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The relative path of a result (model.md §5.1).
pub fn result_path(org: &str, campaign: &str, project: &str, transformation_key: &str, ok: bool, result_key: &str) -> String {
    let kind = if ok { "results" } else { "failures" };
    format!("protocoldagresult/{org}/{campaign}/{project}/{transformation_key}/{kind}/{result_key}/obj.json.zst")
}

impl Objects {
    pub fn open(config: &ObjectStoreConfig) -> Result<Objects> {
        match config {
            ObjectStoreConfig::Local { root } => {
                std::fs::create_dir_all(root).map_err(|e| ObjectError::Config(format!("cannot create {}: {e}", root.display())))?;
                let fs = LocalFileSystem::new_with_prefix(root).map_err(|e| ObjectError::Config(e.to_string()))?;
                Ok(Objects {
                    inner: Arc::new(fs),
                    prefix: String::new(),
                    description: format!("local directory {}", root.display()),
                    local_root: Some(root.clone()),
                })
            }
            ObjectStoreConfig::S3(c) => {
                if c.bucket.is_empty() {
                    return Err(ObjectError::Config("an S3 bucket name is required".into()));
                }
                let mut b = AmazonS3Builder::new().with_bucket_name(&c.bucket);
                b = b.with_region(c.region.clone().unwrap_or_else(|| "us-east-1".into()));
                if let Some(v) = &c.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &c.secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                if let Some(v) = &c.session_token {
                    b = b.with_token(v);
                }
                // fail fast when S3 is down: callers answer 503 and clients retry
                let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(10), ..Default::default() };
                // (client options replace the builder's, so allow_http must be set here)
                let mut client = ClientOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(300));
                if let Some(e) = c.endpoint.as_deref().filter(|e| !e.is_empty()) {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                    client = client.with_allow_http(e.starts_with("http://"));
                }
                let s3 = b.with_retry(retry).with_client_options(client).build().map_err(|e| ObjectError::Config(e.to_string()))?;
                let prefix = c.prefix.trim_matches('/').to_string();
                Ok(Objects { inner: Arc::new(s3), prefix, description: format!("s3://{}/{}", c.bucket, c.prefix), local_root: None })
            }
        }
    }

    /// Where this store is (for logs and messages).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The object-store key of a relative path: prefix and path joined like file-system
    /// paths (nothing added for an empty prefix, no doubled `/`).
    fn key(&self, rel: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{}", self.prefix, rel.trim_start_matches('/')))
        }
    }

    /// Write `data` at `rel` (replacing any object there); returns its SHA-256. When this
    /// returns, the object is durable: S3 acknowledges stored objects, and on the local
    /// backend the file and the directories leading to it are fsynced (`object_store`'s
    /// local backend writes and renames without syncing, so a power cut could otherwise
    /// lose an object whose reference the state store has already made durable).
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<String> {
        let digest = sha256_hex(&data);
        self.inner.put(&self.key(rel), PutPayload::from_bytes(data)).await.map_err(|e| classify(rel, e))?;
        if let Some(root) = &self.local_root {
            let (root, file) = (root.clone(), root.join(rel));
            tokio::task::spawn_blocking(move || sync_path(&root, &file))
                .await
                .map_err(|e| ObjectError::Unavailable(format!("{rel}: {e}")))?
                .map_err(|e| ObjectError::Unavailable(format!("{rel}: cannot sync to disk: {e}")))?;
        }
        Ok(digest)
    }

    /// Read the object at `rel`.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let got = self.inner.get(&self.key(rel)).await.map_err(|e| classify(rel, e))?;
        got.bytes().await.map_err(|e| classify(rel, e))
    }

    /// Read the object at `rel` and check its SHA-256 (and size, when known).
    pub async fn get_verified(&self, rel: &str, sha256: Option<&str>, size: Option<i64>) -> Result<Bytes> {
        let data = self.get(rel).await?;
        if let Some(size) = size {
            if data.len() as i64 != size {
                return Err(ObjectError::Corrupt {
                    path: rel.to_string(),
                    detail: format!("{} bytes stored, {size} recorded", data.len()),
                });
            }
        }
        if let Some(want) = sha256 {
            let got = sha256_hex(&data);
            if got != want {
                return Err(ObjectError::Corrupt {
                    path: rel.to_string(),
                    detail: "SHA-256 differs from the one recorded at upload".into(),
                });
            }
        }
        Ok(data)
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        self.inner.delete(&self.key(rel)).await.map_err(|e| classify(rel, e))
    }

    /// Reachable and writable: write and delete a probe object (`_check_test`).
    pub async fn check(&self) -> Result<()> {
        let probe = "_check_test";
        self.put(probe, Bytes::from_static(b"alchemiscale-rs object store check")).await?;
        let back = self.get(probe).await?;
        if back.as_ref() != b"alchemiscale-rs object store check" {
            return Err(ObjectError::Unavailable("the check object read back differently".into()));
        }
        self.delete(probe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(
            result_path("o", "c", "p", "Transformation-1", true, "ProtocolDAGResult-2"),
            "protocoldagresult/o/c/p/Transformation-1/results/ProtocolDAGResult-2/obj.json.zst"
        );
        assert!(result_path("o", "c", "p", "T-1", false, "P-2").contains("/failures/"));
        for (prefix, want) in [("", "a/b"), ("objectstore", "objectstore/a/b"), ("objectstore/", "objectstore/a/b"), ("/x/y/", "x/y/a/b")] {
            let o = Objects {
                inner: Arc::new(object_store::memory::InMemory::new()),
                prefix: prefix.trim_matches('/').into(),
                description: String::new(),
                local_root: None,
            };
            assert_eq!(o.key("a/b").as_ref(), want);
        }
    }
}
