//! `alchemiscale database …`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use alchemiscale_store::dump::verify_dump;
use anyhow::bail;
use clap::Subcommand;

use crate::store_args::{ObjectArgs, StoreArgs};

#[derive(Debug, Subcommand)]
pub enum DatabaseCommand {
    /// Create or upgrade the schema (idempotent). Refuses a store written by a newer
    /// alchemiscale.
    Init {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Verify the schema (every migration applied, every table and unique index present),
    /// the counts the store keeps (successful results per transformation), and that the
    /// object store is reachable and writable. Prints "No inconsistencies
    /// found in database." or the reason and exits 1.
    Check {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        objects: ObjectArgs,
        /// Check only the state store.
        #[arg(long)]
        skip_objects: bool,
    },
    /// Delete every record (networks, tasks, results references, identities,
    /// registrations) and the schema. Results in the object store are not touched.
    Reset {
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a consistent dump of the whole store to FILE (zstd-compressed JSON Lines with
    /// a SHA-256 trailer) while the servers keep running. Loads into either backend.
    Dump {
        /// Output file (written under a temporary name, then renamed).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Load a dump written by `database dump`. The file is verified first (checksum,
    /// format, schema version); a store that does not exist yet is created; a store
    /// holding data is refused unless --force.
    Load {
        file: PathBuf,
        /// Replace the contents of a non-empty store.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check a dump file's integrity without touching any store.
    VerifyDump { file: PathBuf },
    /// Take an online backup: a consistent dump, verified by loading it into a scratch
    /// store, written to a directory or s3://bucket/prefix as
    /// alchemiscale-backup-<UTC time>.dump.zst; then only the newest --keep are kept. A
    /// failed backup leaves earlier ones untouched.
    Backup {
        #[command(flatten)]
        target: super::backup::BackupTargetArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the backups at a target, oldest first.
    Backups {
        /// A directory or s3://bucket/prefix.
        #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX", value_parser = |s: &str| s.parse::<alchemiscale_backup::Target>().map_err(|e| e.to_string()))]
        from: alchemiscale_backup::Target,
        #[command(flatten)]
        s3: crate::store_args::S3AccessArgs,
    },
    /// Restore a backup (the newest at the target unless --name) into the store: it is
    /// fetched and verified before anything is written; a store holding data is refused
    /// unless --force.
    Restore {
        /// A directory or s3://bucket/prefix.
        #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX", value_parser = |s: &str| s.parse::<alchemiscale_backup::Target>().map_err(|e| e.to_string()))]
        from: alchemiscale_backup::Target,
        /// The backup's name (as `database backups` lists it).
        #[arg(long)]
        name: Option<String>,
        /// Replace the contents of a non-empty store.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        s3: crate::store_args::S3AccessArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn confirm(prompt: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to reset without confirmation: stdin is not a terminal (pass --yes)");
    }
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

pub async fn run(cmd: DatabaseCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    match cmd {
        DatabaseCommand::Init { store } => {
            let store = store.connect(data_dir).await?;
            store.init().await?;
        }
        DatabaseCommand::Check { store, objects, skip_objects } => {
            let store = store.connect(data_dir).await?;
            let status = store.schema_status().await?;
            if !status.is_current() {
                bail!("{status}");
            }
            let problems = store.inconsistencies().await?;
            if !problems.is_empty() {
                bail!("{} inconsistencies found:\n{}", problems.len(), problems.join("\n"));
            }
            if !skip_objects {
                let objects = objects.open(data_dir)?;
                objects.check().await.map_err(|e| anyhow::anyhow!("object store {}: {e}", objects.description()))?;
                let missing = alchemiscale_backup::missing_result_objects(&store, &objects).await?;
                if !missing.is_empty() {
                    bail!("{} result references without their object in {}:\n{}", missing.len(), objects.description(), missing.join("\n"));
                }
            }
            println!("No inconsistencies found in database.");
        }
        DatabaseCommand::Reset { yes, store } => {
            let store = store.connect(data_dir).await?;
            if !yes {
                let prompt = format!(
                    "This deletes EVERY record in the state store at {} (networks, tasks, identities ...).\nType 'yes' to continue: ",
                    store.location()
                );
                if !confirm(&prompt)? {
                    bail!("reset cancelled");
                }
            }
            store.reset().await?;
        }
        DatabaseCommand::Dump { file, store } => {
            let store = store.connect(data_dir).await?;
            store.require_current_schema().await?;
            let stats = store.dump_file(&file).await?;
            println!("dumped {} rows from {} tables to {} (sha256 {})", stats.rows, stats.tables, file.display(), stats.sha256);
        }
        DatabaseCommand::Load { file, force, store } => {
            let store = store.connect(data_dir).await?;
            let stats = store.load_file(&file, force).await?;
            println!("loaded {} rows into {} tables from {}", stats.rows, stats.tables, file.display());
        }
        DatabaseCommand::Backup { target, store } => {
            let store = store.connect(data_dir).await?;
            super::backup::backup(&store, &target).await?;
        }
        DatabaseCommand::Backups { from, s3 } => super::backup::list(&from, &s3).await?,
        DatabaseCommand::Restore { from, name, force, s3, store } => {
            let store = store.connect(data_dir).await?;
            super::backup::restore(&store, &from, name.as_deref(), force, &s3).await?;
        }
        DatabaseCommand::VerifyDump { file } => {
            let stats = verify_dump(&file)?;
            println!("{} is intact: {} rows in {} tables (sha256 {})", file.display(), stats.rows, stats.tables, stats.sha256);
        }
    }
    Ok(())
}
