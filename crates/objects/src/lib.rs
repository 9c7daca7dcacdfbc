//! The object store: where ProtocolDAGResult blobs live.
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
//!
//! A large object can also be written while it is still arriving, before its final place
//! is known ([`Objects::writer`]): it is assembled under `<prefix>/_staging/` (a file, or
//! an S3 multipart upload) and moved into place once the caller knows where it belongs
//! ([`StagedObject::commit`]: a rename, or an S3 copy). Abandoned staging objects are
//! removed when their writer is dropped; a crash can leave one behind, never a reference
//! to one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
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

/// S3 settings.
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
    sync_dirs(root, file)
}

/// fsync the directories from `file`'s parent up to `root`.
fn sync_dirs(root: &std::path::Path, file: &std::path::Path) -> std::io::Result<()> {
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

/// Run file-system work off the executor; a failure is `Unavailable`, reported as
/// `<label>: <error>`.
async fn on_disk<T: Send + 'static>(label: String, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ObjectError::Unavailable(format!("{label}: {e}"))),
        Err(e) => Err(ObjectError::Unavailable(format!("{label}: {e}"))),
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The relative path of a result.
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
            on_disk(format!("{rel}: cannot sync to disk"), move || sync_path(&root, &file)).await?;
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

    /// The objects under `rel` (a directory-like prefix), as the store describes them.
    async fn list_meta(&self, rel: &str) -> Result<Vec<object_store::ObjectMeta>> {
        use futures_util::TryStreamExt;
        self.inner.list(Some(&self.key(rel))).try_collect().await.map_err(|e| classify(rel, e))
    }

    /// Relative paths of the objects under `rel` (a directory-like prefix).
    pub async fn list(&self, rel: &str) -> Result<Vec<String>> {
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        Ok(self.list_meta(rel).await?.into_iter().map(|m| m.location.as_ref()[strip..].to_string()).collect())
    }

    /// Relative paths and sizes of the objects under `rel`.
    pub async fn list_sizes(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        Ok(self.list_meta(rel).await?.into_iter().map(|m| (m.location.as_ref()[strip..].to_string(), m.size)).collect())
    }

    /// Remove staging objects last written more than `older_than` ago: what a server that
    /// stopped mid-upload (a crash, a power cut) left behind. Uploads in progress write
    /// continually, so a day-old staging object belongs to none. (An S3 multipart upload
    /// cut short that way is not an object; a bucket lifecycle rule aborting incomplete
    /// multipart uploads cleans those.) Returns how many were removed.
    pub async fn remove_stale_staging(&self, older_than: Duration) -> Result<usize> {
        let found = self.list_meta(STAGING_DIR).await?;
        let cutoff = chrono_cutoff(older_than);
        let mut removed = 0;
        for meta in found.into_iter().filter(|m| m.last_modified < cutoff) {
            self.inner.delete(&meta.location).await.map_err(|e| classify(meta.location.as_ref(), e))?;
            removed += 1;
        }
        Ok(removed)
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

fn chrono_cutoff(older_than: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(older_than)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// Where objects are assembled before their place is known (relative to the prefix).
pub const STAGING_DIR: &str = "_staging";
/// S3 multipart part size (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// S3 parts in flight per object.
const PARTS_IN_FLIGHT: usize = 4;
/// Local writes: the disk is asked to start writing every this many new bytes, so it
/// works while the object is still arriving and the final fsync has little left to do...
const WRITEBACK_STEP: u64 = 8 << 20;
/// ... and the writer waits until all but this many bytes are on their way, so a disk
/// slower than the upload holds it back instead of filling memory with dirty pages.
const WRITEBACK_AHEAD: u64 = 24 << 20;

/// An object being written piece by piece ([`Objects::writer`]).
pub struct ObjectWriter {
    objects: Objects,
    staging: String,
    hasher: Sha256,
    size: u64,
    sink: Option<WriterSink>,
}

enum WriterSink {
    Local { file: std::fs::File, progress: Writeback },
    Remote(WriteMultipart),
}

/// How far a staging file's bytes are written, on their way to disk, and waited for.
/// Only the final fsync ([`ObjectWriter::finish`]) makes them durable; this keeps the
/// disk busy meanwhile (PostgreSQL's `*_flush_after` settings do the same).
#[derive(Default)]
struct Writeback {
    written: u64,
    started: u64,
    waited: u64,
}

impl Writeback {
    fn wrote(&mut self, file: &std::fs::File, n: u64) -> std::io::Result<()> {
        self.written += n;
        if self.written - self.started < WRITEBACK_STEP {
            return Ok(());
        }
        start_writeback(file, self.started, self.written)?;
        self.started = self.written;
        let wait_upto = self.started.saturating_sub(WRITEBACK_AHEAD);
        if wait_upto > self.waited {
            wait_writeback(file, self.waited, wait_upto)?;
            self.waited = wait_upto;
        }
        Ok(())
    }
}

/// Ask the kernel to start writing `file`'s bytes `[from, to)` to disk, without waiting.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    sync_file_range(file, from, to, libc::SYNC_FILE_RANGE_WRITE)
}

/// Wait until `file`'s bytes `[from, to)` have been written (not a durability barrier:
/// neither metadata nor the disk's cache).
#[cfg(target_os = "linux")]
fn wait_writeback(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    sync_file_range(file, from, to, libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER)
}

#[cfg(target_os = "linux")]
fn sync_file_range(file: &std::fs::File, from: u64, to: u64, flags: std::ffi::c_uint) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else { return Ok(()) };
    // SAFETY: a plain system call on a file descriptor this function borrows
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // a write that failed (the final fsync would report it too, later)
        Some(libc::EIO | libc::ENOSPC | libc::EDQUOT) => Err(e),
        // a file system without it (EINVAL, ENOSYS, ...): only a hint, the final fsync
        // still makes the object durable
        _ => Ok(()),
    }
}

/// Elsewhere: flush what was written (waiting), as the final fsync would.
#[cfg(not(target_os = "linux"))]
fn start_writeback(file: &std::fs::File, _from: u64, _to: u64) -> std::io::Result<()> {
    file.sync_data()
}

#[cfg(not(target_os = "linux"))]
fn wait_writeback(_file: &std::fs::File, _from: u64, _to: u64) -> std::io::Result<()> {
    Ok(())
}

impl Objects {
    /// Remove a staging object's file; false on S3 (nothing done: the caller aborts or
    /// deletes the object there).
    fn remove_staging_file(&self, staging: &str) -> bool {
        let Some(root) = &self.local_root else { return false };
        let _ = std::fs::remove_file(root.join(staging));
        true
    }
}

impl ObjectWriter {
    /// Append `chunk`.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.size += chunk.len() as u64;
        let staging = self.staging.clone();
        match self.sink.take() {
            Some(WriterSink::Local { mut file, mut progress }) => {
                let mut hasher = std::mem::take(&mut self.hasher);
                let written = on_disk(staging, move || {
                    use std::io::Write;
                    hasher.update(&chunk);
                    file.write_all(&chunk)?;
                    progress.wrote(&file, chunk.len() as u64)?;
                    Ok((file, hasher, progress))
                })
                .await;
                // (on failure the sink stays empty, so dropping the writer cannot find the
                // file: remove it here)
                let (file, hasher, progress) = written.inspect_err(|_| {
                    self.objects.remove_staging_file(&self.staging);
                })?;
                self.hasher = hasher;
                self.sink = Some(WriterSink::Local { file, progress });
            }
            Some(WriterSink::Remote(mut upload)) => {
                self.hasher.update(&chunk);
                let waited = upload.wait_for_capacity(PARTS_IN_FLIGHT).await;
                upload.put(chunk);
                self.sink = Some(WriterSink::Remote(upload));
                waited.map_err(|e| classify(&staging, e))?;
            }
            None => return Err(ObjectError::Unavailable(format!("{staging}: written after a failure"))),
        }
        Ok(())
    }

    /// Everything written is durable at the staging place: ready to be moved into place.
    pub async fn finish(mut self) -> Result<StagedObject> {
        let staging = self.staging.clone();
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        match self.sink.take() {
            Some(WriterSink::Local { file, .. }) => {
                // (dropped unsynced, the staged object removes its file)
                let staged = StagedObject { objects: self.objects.clone(), staging: staging.clone(), sha256, size: self.size, done: false };
                on_disk(format!("{staging}: cannot sync to disk"), move || file.sync_all()).await?;
                Ok(staged)
            }
            Some(WriterSink::Remote(upload)) => {
                upload.finish().await.map_err(|e| classify(&staging, e))?;
                Ok(StagedObject { objects: self.objects.clone(), staging, sha256, size: self.size, done: false })
            }
            None => Err(ObjectError::Unavailable(format!("{staging}: finished after a failure"))),
        }
    }
}

impl Drop for ObjectWriter {
    /// An unfinished object is abandoned: its staging file or multipart upload goes.
    fn drop(&mut self) {
        match self.sink.take() {
            Some(WriterSink::Local { .. }) => {
                self.objects.remove_staging_file(&self.staging);
            }
            Some(WriterSink::Remote(upload)) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = upload.abort().await;
                    });
                }
            }
            None => {}
        }
    }
}

/// A complete object at its staging place, to be [committed](StagedObject::commit) to its
/// final one (or dropped, which removes it).
pub struct StagedObject {
    objects: Objects,
    staging: String,
    sha256: String,
    size: u64,
    done: bool,
}

impl StagedObject {
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Move the object to `rel` (replacing any object there); durable when this returns.
    /// Returns its SHA-256.
    pub async fn commit(mut self, rel: &str) -> Result<String> {
        match &self.objects.local_root {
            Some(root) => {
                let (from, to, root) = (root.join(&self.staging), root.join(rel), root.clone());
                on_disk(format!("{rel}: cannot move into place"), move || {
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::rename(&from, &to)?;
                    sync_dirs(&root, &to)
                })
                .await?;
            }
            None => {
                let (from, to) = (self.objects.key(&self.staging), self.objects.key(rel));
                self.objects.inner.copy(&from, &to).await.map_err(|e| classify(rel, e))?;
                if let Err(e) = self.objects.inner.delete(&from).await {
                    tracing::warn!(staging = %self.staging, error = %e, "could not remove a staging object after copying it into place");
                }
            }
        }
        self.done = true;
        Ok(std::mem::take(&mut self.sha256))
    }
}

impl Drop for StagedObject {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.objects.remove_staging_file(&self.staging) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (inner, key) = (self.objects.inner.clone(), self.objects.key(&self.staging));
            rt.spawn(async move {
                let _ = inner.delete(&key).await;
            });
        }
    }
}

impl Objects {
    /// Start an object whose place is not known yet: write it with [`ObjectWriter::write`],
    /// then [`ObjectWriter::finish`] and [`StagedObject::commit`].
    pub async fn writer(&self) -> Result<ObjectWriter> {
        let staging = format!("{STAGING_DIR}/{}", uuid::Uuid::new_v4().simple());
        let sink = match &self.local_root {
            Some(root) => {
                let path = root.join(&staging);
                let file = on_disk(staging.clone(), move || {
                    std::fs::create_dir_all(path.parent().expect("a staging path has a parent"))?;
                    std::fs::File::create(&path)
                })
                .await?;
                WriterSink::Local { file, progress: Writeback::default() }
            }
            None => {
                let upload = self.inner.put_multipart(&self.key(&staging)).await.map_err(|e| classify(&staging, e))?;
                WriterSink::Remote(WriteMultipart::new_with_chunk_size(upload, PART_SIZE))
            }
        };
        Ok(ObjectWriter { objects: self.clone(), staging, hasher: Sha256::new(), size: 0, sink: Some(sink) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_runs_ahead_of_the_writer_within_bounds() {
        let mut f = tempfile::tempfile().unwrap();
        let mut progress = Writeback::default();
        let chunk = vec![7u8; 1 << 20];
        let mut seen = Vec::new();
        for _ in 0..41 {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
            progress.wrote(&f, chunk.len() as u64).unwrap();
            seen.push((progress.started >> 20, progress.waited >> 20));
            assert!(progress.written - progress.started < WRITEBACK_STEP);
            assert!(progress.started - progress.waited <= WRITEBACK_AHEAD);
        }
        assert_eq!(seen[7], (8, 0), "started every 8 MiB");
        assert_eq!(seen[31], (32, 8), "waited for all but the last 24 MiB");
        assert_eq!(seen[40], (40, 16));
        assert_eq!(f.metadata().unwrap().len(), 41 << 20);
    }

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
