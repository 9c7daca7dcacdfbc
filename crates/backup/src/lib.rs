//! Verified backups of the state store (`alchemiscale database backup`, `--backup-every`).
//!
//! A backup is an online dump ([`Store::dump_file`]: one snapshot transaction, so servers
//! keep serving while it is taken) that is trusted only after it has been loaded into a
//! scratch SQLite store and every row counted back. It is then written to the target, a
//! directory or an S3 prefix, under a name that sorts by time
//! (`alchemiscale-backup-20261205T061500.123Z.dump.zst`), through a staging object that
//! becomes the backup only when complete; only then are older backups beyond `keep` removed.
//! A failed backup (target full or unreachable, store down) therefore never removes or
//! damages an earlier one.
//!
//! Results live in the object store, not in the dump: a backup holds the references
//! (with each result's SHA-256); the object store is made durable and versioned by its
//! own means (S3 versioning, or a copy of the directory).

mod schedule;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use alchemiscale_objects::{ObjectStoreConfig, Objects, S3Config};
use alchemiscale_store::dump::{verify_dump, DumpStats};
use alchemiscale_store::{Store, StoreLocation, StoreOptions};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

pub use schedule::{spawn_schedule, Schedule, LEASE};

/// File names of backups: `PREFIX` + UTC time + `SUFFIX`.
pub const PREFIX: &str = "alchemiscale-backup-";
pub const SUFFIX: &str = ".dump.zst";

/// Where backups go: a directory, or `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Target> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("backup target {s:?} names no bucket (s3://bucket/prefix)");
            }
            return Ok(Target::S3 { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            bail!("backup target {s:?}: {scheme}:// is not supported (a directory or s3://bucket/prefix)");
        }
        if s.is_empty() {
            bail!("the backup target is empty (a directory or s3://bucket/prefix)");
        }
        Ok(Target::Dir(PathBuf::from(s)))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Dir(p) => write!(f, "{}", p.display()),
            Target::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Target {
    /// Open the target; `s3` supplies region, credentials and endpoint for an S3 target
    /// (its bucket and prefix are replaced by the target's).
    pub fn open(&self, s3: Option<&S3Config>) -> Result<Objects> {
        let config = match self {
            Target::Dir(root) => ObjectStoreConfig::Local { root: root.clone() },
            Target::S3 { bucket, prefix } => {
                let base = s3.cloned().unwrap_or(S3Config {
                    bucket: String::new(),
                    prefix: String::new(),
                    region: None,
                    access_key_id: None,
                    secret_access_key: None,
                    session_token: None,
                    endpoint: None,
                });
                ObjectStoreConfig::S3(S3Config { bucket: bucket.clone(), prefix: prefix.clone(), ..base })
            }
        };
        Objects::open(&config).with_context(|| format!("cannot open the backup target {self}"))
    }
}

/// One backup written.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub bytes: u64,
    pub stats: DumpStats,
    /// Older backups removed to keep `keep`.
    pub removed: Vec<String>,
}

/// A backup's name for a time (millisecond precision, sorts by time).
pub fn backup_name(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{PREFIX}{}{SUFFIX}", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

fn is_backup_name(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(SUFFIX) && !name.contains('/')
}

/// The backups at `target`, oldest first.
pub async fn list(target: &Objects) -> Result<Vec<String>> {
    let mut names: Vec<String> = target
        .list("")
        .await
        .with_context(|| format!("cannot list the backups in {}", target.description()))?
        .into_iter()
        .filter(|n| is_backup_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Load the dump at `path` into a scratch SQLite store under `work_dir` and count every row
/// back: a dump is a backup only if it restores.
pub async fn verify_by_loading(path: &Path, work_dir: &Path) -> Result<DumpStats> {
    let scratch = tempfile::tempdir_in(work_dir).context("cannot create a scratch directory to verify the backup")?;
    let location = StoreLocation::Sqlite { path: scratch.path().join("verify.db") };
    let options = StoreOptions { max_connections: 2, sqlite_synchronous: "OFF".into(), ..Default::default() };
    let store = Store::connect(&location, &options).await.context("cannot open the scratch store")?;
    let stats = store.load_file(path, false).await.context("the backup does not load into a scratch store")?;
    let counted: i64 = store.table_counts().await?.iter().map(|(_, n)| n).sum();
    let problems = store.inconsistencies().await?;
    store.close().await;
    if counted as u64 != stats.rows {
        bail!("the backup loaded {counted} rows into a scratch store; its trailer says {}", stats.rows);
    }
    if !problems.is_empty() {
        bail!("the backup loads but is inconsistent: {}", problems.join("; "));
    }
    Ok(stats)
}

/// Take a backup of `store` into `target`, verify it, then keep only the newest `keep`
/// backups there (0 keeps all). `work_dir` holds the dump and the scratch store meanwhile.
pub async fn take(store: &Store, target: &Objects, keep: usize, work_dir: &Path) -> Result<Report> {
    std::fs::create_dir_all(work_dir).with_context(|| format!("cannot create {}", work_dir.display()))?;
    let work = tempfile::tempdir_in(work_dir).with_context(|| format!("cannot create a work directory in {}", work_dir.display()))?;
    let name = backup_name(chrono::Utc::now());
    let file = work.path().join(&name);
    store.require_current_schema().await?;
    let dumped = store.dump_file(&file).await.context("the dump failed")?;
    let stats = verify_by_loading(&file, work.path()).await?;
    if stats.sha256 != dumped.sha256 {
        bail!("the dump changed between writing and verifying it");
    }
    let bytes = upload(&file, target, &name).await?;
    let removed = prune(target, keep).await?;
    Ok(Report { name, bytes, stats, removed })
}

/// Copy `file` to `name` in `target` (whole or not at all).
async fn upload(file: &Path, target: &Objects, name: &str) -> Result<u64> {
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot write the backup to {}: {e}", target.description());
    let mut writer = target.writer().await.map_err(|e| fail(&e))?;
    let mut source = tokio::fs::File::open(file).await?;
    let mut total = 0u64;
    loop {
        let mut chunk = vec![0u8; 8 << 20];
        let n = source.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        total += n as u64;
        writer.write(Bytes::from(chunk)).await.map_err(|e| fail(&e))?;
    }
    let staged = writer.finish().await.map_err(|e| fail(&e))?;
    staged.commit(name).await.map_err(|e| fail(&e))?;
    Ok(total)
}

/// Remove all but the newest `keep` backups (0 keeps all).
async fn prune(target: &Objects, keep: usize) -> Result<Vec<String>> {
    let names = list(target).await?;
    if keep == 0 || names.len() <= keep {
        return Ok(Vec::new());
    }
    let old = names[..names.len() - keep].to_vec();
    for name in &old {
        target.delete(name).await.with_context(|| format!("cannot remove the old backup {name}"))?;
    }
    Ok(old)
}

/// Download backup `name` (or the newest, when `None`) from `target` into `dir` and check
/// it; returns its local path.
pub async fn fetch(target: &Objects, name: Option<&str>, dir: &Path) -> Result<PathBuf> {
    let name = match name {
        Some(n) => n.to_string(),
        None => list(target).await?.pop().with_context(|| format!("no backups in {}", target.description()))?,
    };
    if !is_backup_name(&name) {
        bail!("{name:?} is not a backup name ({PREFIX}<time>{SUFFIX})");
    }
    let data = target.get(&name).await.with_context(|| format!("cannot read {name} from {}", target.description()))?;
    let path = dir.join(&name);
    tokio::fs::write(&path, &data).await.with_context(|| format!("cannot write {}", path.display()))?;
    verify_dump(&path)?;
    Ok(path)
}

/// Result references whose object is missing from the object store, or shorter or longer
/// than recorded (one line each). The store's result objects are listed once and the
/// references read a page at a time (`database check`; run it after a restore to see
/// that the object store still holds what the restored references name).
pub async fn missing_result_objects(store: &Store, objects: &Objects) -> Result<Vec<String>> {
    let present: std::collections::HashMap<String, u64> = objects.list_sizes("protocoldagresult").await?.into_iter().collect();
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.result_objects(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.0;
        for (_, key, location, size) in page {
            match (present.get(&location), size) {
                (None, _) => out.push(format!("result {key}: object {location} is missing")),
                (Some(&have), Some(want)) if have as i64 != want => {
                    out.push(format!("result {key}: object {location} holds {have} bytes, {want} recorded"))
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("s3://bucket/a/b/".parse::<Target>().unwrap(), Target::S3 { bucket: "bucket".into(), prefix: "a/b".into() });
        assert_eq!("s3://bucket".parse::<Target>().unwrap(), Target::S3 { bucket: "bucket".into(), prefix: String::new() });
        assert_eq!("/srv/backups".parse::<Target>().unwrap(), Target::Dir("/srv/backups".into()));
        assert!("s3:///x".parse::<Target>().is_err());
        assert!("gs://bucket/x".parse::<Target>().unwrap_err().to_string().contains("not supported"));
        assert!("".parse::<Target>().is_err());
    }

    #[test]
    fn names_sort_by_time() {
        let a = backup_name(chrono::DateTime::from_timestamp(1_700_000_000, 5_000_000).unwrap());
        let b = backup_name(chrono::DateTime::from_timestamp(1_700_000_000, 6_000_000).unwrap());
        let c = backup_name(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(is_backup_name(&a));
        assert!(!is_backup_name("_staging/x"));
        assert!(!is_backup_name(&format!("sub/{a}")));
    }
}
