//! `alchemiscale database backup` / `restore` / `backups`, and the servers' scheduled
//! backups (`--backup-every`); the work itself is `alchemiscale_backup`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alchemiscale_backup::Target;
use alchemiscale_store::Store;
use anyhow::Context;
use clap::Args;

use crate::store_args::S3AccessArgs;

fn parse_target(s: &str) -> Result<Target, String> {
    s.parse::<Target>().map_err(|e| e.to_string())
}

fn parse_every(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse::<humantime::Duration>().map_err(|e| format!("{e} (examples: 6h, 30m, 1d)"))?.into();
    if d < Duration::from_secs(1) {
        return Err("the backup interval must be at least 1s".into());
    }
    Ok(d)
}

/// Where `database backup` writes.
#[derive(Debug, Args)]
pub struct BackupTargetArgs {
    /// Target: a directory, or s3://bucket/prefix (S3 access below).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX", value_parser = parse_target)]
    pub to: Target,
    /// Keep the newest N backups at the target and remove older ones (0 keeps all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep: usize,
    /// Where the dump is assembled and verified before it is written to the target.
    /// Default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3AccessArgs,
}

/// Backups taken by a server on a schedule.
#[derive(Debug, Args)]
pub struct BackupScheduleArgs {
    /// Take a verified backup this often (e.g. 6h). With several servers on one store,
    /// one of them takes each backup (a lease in the store).
    #[arg(long, env = "ALCHEMISCALE_BACKUP_EVERY", value_name = "DURATION", value_parser = parse_every, requires = "backup_to", help_heading = "Backups")]
    pub backup_every: Option<Duration>,
    /// Where scheduled backups go: a directory or s3://bucket/prefix (S3 access as for
    /// the object store).
    #[arg(long, env = "ALCHEMISCALE_BACKUP_TO", value_name = "DIR|s3://BUCKET/PREFIX", value_parser = parse_target, help_heading = "Backups")]
    pub backup_to: Option<Target>,
    /// Scheduled backups kept at the target (0 keeps all).
    #[arg(long, env = "ALCHEMISCALE_BACKUP_KEEP", value_name = "N", default_value_t = 14, help_heading = "Backups")]
    pub backup_keep: usize,
}

impl BackupScheduleArgs {
    /// Start the schedule, if one was asked for.
    pub fn spawn(&self, store: &Store, s3: &S3AccessArgs) -> anyhow::Result<()> {
        let (Some(every), Some(to)) = (self.backup_every, &self.backup_to) else {
            if self.backup_to.is_some() {
                tracing::warn!("--backup-to is set without --backup-every: no scheduled backups");
            }
            return Ok(());
        };
        let target = to.open(Some(&s3.config("", "")))?;
        let holder = format!("{}-{}-{}", hostname(), std::process::id(), uuid_like());
        tracing::info!(every = %humantime::format_duration(every), target = %to, keep = self.backup_keep, "scheduled backups");
        alchemiscale_backup::spawn_schedule(
            store.clone(),
            alchemiscale_backup::Schedule { every, target, keep: self.backup_keep, work_dir: std::env::temp_dir(), holder },
        );
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "host".into())
}

fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `database backup`.
pub async fn backup(store: &Store, args: &BackupTargetArgs) -> anyhow::Result<()> {
    let target = args.to.open(Some(&args.s3.config("", "")))?;
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let report = alchemiscale_backup::take(store, &target, args.keep, &work_dir)
        .await
        .with_context(|| format!("backup to {} failed; earlier backups there are kept", args.to))?;
    println!(
        "backed up {} rows from {} tables to {}/{} ({} bytes, sha256 {}); verified by loading it into a scratch store",
        report.stats.rows, report.stats.tables, args.to, report.name, report.bytes, report.stats.sha256
    );
    for name in &report.removed {
        println!("removed old backup {name}");
    }
    Ok(())
}

/// `database backups`: list what a target holds, oldest first.
pub async fn list(to: &Target, s3: &S3AccessArgs) -> anyhow::Result<()> {
    let target = to.open(Some(&s3.config("", "")))?;
    for name in alchemiscale_backup::list(&target).await? {
        println!("{name}");
    }
    Ok(())
}

/// `database restore`: fetch a backup (the newest by default) and load it.
pub async fn restore(store: &Store, from: &Target, name: Option<&str>, force: bool, s3: &S3AccessArgs) -> anyhow::Result<()> {
    let target = from.open(Some(&s3.config("", "")))?;
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    let path = alchemiscale_backup::fetch(&target, name, work.path()).await?;
    let stats = store.load_file(&path, force).await?;
    println!("restored {} rows into {} tables from {from}/{}", stats.rows, stats.tables, file_name(&path));
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
