//! `alchemiscale strategist`: run the strategist service, which executes
//! the Strategies attached to networks and creates, actions and cancels their tasks.
//!
//! Reads upstream's strategist YAML (`sleep_interval`, `max_workers`, `scopes`,
//! `loglevel`, `logfile`, `cache_*`, plus `python`, `python_timeout`, `python_env` for
//! strategies without a native implementation) and talks to the state and object stores
//! directly, chosen like every server command's. `--once` runs one cycle and exits (for
//! cron and tests). Exit status 0 after a signal or `--once`; 1 on errors; 2 for an
//! unreadable or invalid settings file.

use std::path::{Path, PathBuf};

use alchemiscale_strategist::{Settings, Strategist};
use anyhow::Context;
use clap::Args;

use crate::store_args::{ObjectArgs, StoreArgs};

/// Run the strategist service.
#[derive(Debug, Args)]
pub struct StrategistCommand {
    /// YAML settings file (upstream's keys; see docs/strategies.md). Without one, upstream's defaults.
    #[arg(short = 'c', long = "config-file")]
    pub config_file: Option<PathBuf>,
    /// Run one cycle, then exit.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
}

/// The settings file, or a usage error (exit status 2) naming what is wrong.
pub fn read_settings(path: Option<&Path>) -> Result<(Settings, Vec<String>), String> {
    let Some(path) = path else { return Settings::from_yaml("").map_err(|e| e.to_string()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Settings::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The object store: the options and variables first, then the file's `s3_settings`.
pub fn object_args(args: &ObjectArgs, settings: &Settings) -> ObjectArgs {
    let mut a = args.clone();
    let fill = |field: &mut Option<String>, key: &str| {
        if field.as_deref().unwrap_or("").is_empty() {
            if let Some(v) = settings.s3(key) {
                *field = Some(v);
            }
        }
    };
    fill(&mut a.s3_bucket, "AWS_S3_BUCKET");
    fill(&mut a.s3.default_region, "AWS_DEFAULT_REGION");
    fill(&mut a.s3.access_key_id, "AWS_ACCESS_KEY_ID");
    fill(&mut a.s3.secret_access_key, "AWS_SECRET_ACCESS_KEY");
    fill(&mut a.s3.session_token, "AWS_SESSION_TOKEN");
    fill(&mut a.s3.s3_endpoint, "AWS_ENDPOINT_URL");
    if a.s3_prefix.is_empty() {
        if let Some(p) = settings.s3("AWS_S3_PREFIX") {
            a.s3_prefix = p;
        }
    }
    a
}

pub async fn run(cmd: StrategistCommand, data_dir: &Path, settings: Settings, warnings: Vec<String>) -> anyhow::Result<()> {
    alchemiscale_compute::logging::init_with(
        "strategist",
        alchemiscale_compute::settings::parse_loglevel(&settings.loglevel).unwrap_or(tracing::level_filters::LevelFilter::WARN),
        settings.logfile.as_deref(),
        &["alchemiscale_strategist", "alchemiscale"],
    )
    .map_err(anyhow::Error::msg)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let store = cmd.store.connect_ready(data_dir).await?;
    let objects = object_args(&cmd.objects, &settings).open(data_dir)?;
    let strategist = Strategist::from_settings(store.clone(), Some(objects), &settings).context("setting up the strategist")?;
    if cmd.once {
        let summary = strategist.cycle().await;
        tracing::info!(?summary, "cycle done");
    } else {
        let stop = strategist.stop_handle();
        tokio::spawn(async move {
            super::server::shutdown_signal().await;
            stop.stop();
        });
        strategist.run().await;
    }
    store.close().await;
    Ok(())
}
