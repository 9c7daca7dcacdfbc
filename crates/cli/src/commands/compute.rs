//! `alchemiscale compute synchronous`: run one compute service from a YAML
//! settings file; and the hidden `alchemiscale compute execute`, the native executor the
//! service starts for each task (see `alchemiscale_compute::child`).
//!
//! Exit status: 0 after a signal (SIGINT, SIGTERM, SIGHUP) or a limit (`max_tasks`,
//! `max_time`); 1 on an invalid settings file or an error that ended the service (after
//! deregistering); 2 for usage errors, including an unreadable `-c` file. A second signal
//! while the service is shutting down exits at once (status 1) without waiting for
//! deregistration.

use std::path::PathBuf;

use alchemiscale_compute::{ExecutorConfig, Service, Settings};
use anyhow::Context;
use clap::Args;

/// Start one compute service.
#[derive(Debug, Args)]
pub struct SynchronousCommand {
    /// YAML settings file: upstream's compute-service keys (`api_url`, `identifier`, `key`,
    /// `name`, `shared_basedir`, `scratch_basedir`, intervals, scopes, limits, …) plus
    /// `task_timeout`, `executor_python` and `wanted_check_interval`.
    #[arg(short = 'c', long = "config-file", value_parser = readable_file)]
    pub config_file: PathBuf,
    /// Service name; overrides `name` from the file.
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// Id of the compute manager that started this service; overrides
    /// `compute_manager_id` from the file.
    #[arg(short = 'm', long = "compute-manager-id")]
    pub compute_manager_id: Option<String>,
}

/// Run one task's protocol natively (started by the compute service; not for direct use).
#[derive(Debug, Args)]
pub struct ExecuteCommand {
    /// Task directory written by the service.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the result.
    #[arg(long)]
    pub output: PathBuf,
}

/// `-c` must name a readable file (else a usage error, exit 2).
pub(crate) fn readable_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    std::fs::File::open(&p).map_err(|e| format!("cannot read '{s}': {e}"))?;
    if !p.is_file() {
        return Err(format!("'{s}' is not a file"));
    }
    Ok(p)
}

/// Resolve on the first SIGINT, SIGTERM or SIGHUP; a second one exits the process.
pub(crate) fn signals() -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing signal handlers")?;
    let mut term = signal(SignalKind::terminate()).context("installing signal handlers")?;
    let mut hup = signal(SignalKind::hangup()).context("installing signal handlers")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first = Some(tx);
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            match first.take() {
                Some(t) => {
                    let _ = t.send(());
                }
                None => {
                    tracing::error!("Second signal: exiting without waiting for deregistration");
                    std::process::exit(1);
                }
            }
        }
    });
    Ok(rx)
}

/// `alchemiscale compute synchronous`.
pub async fn run_synchronous(cmd: SynchronousCommand) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cmd.config_file).with_context(|| format!("reading {}", cmd.config_file.display()))?;
    let (settings, warnings) = Settings::from_yaml_with_overrides(&text, cmd.name.as_deref(), cmd.compute_manager_id.as_deref())
        .with_context(|| format!("settings file {}", cmd.config_file.display()))?;
    let executors = ExecutorConfig::current_exe(settings.executor_python.clone()).context("locating the alchemiscale executable")?;
    let service = Service::new(settings, executors)?;
    alchemiscale_compute::logging::init(service.settings(), &service.id().to_string()).map_err(anyhow::Error::msg)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let stop = service.stop_handle();
    let signalled = signals()?;
    tokio::spawn(async move {
        if signalled.await.is_ok() {
            tracing::info!("Caught signal; stopping");
            stop.stop();
        }
    });
    let summary = service.run().await?;
    tracing::info!(
        "Service ended ({:?}): {} tasks executed ({} succeeded, {} failed), {} released",
        summary.stop_reason,
        summary.executed,
        summary.succeeded,
        summary.failed,
        summary.released
    );
    Ok(())
}

/// `alchemiscale compute execute` (hidden).
pub async fn run_execute(cmd: ExecuteCommand) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || alchemiscale_compute::child::execute(&cmd.input, &cmd.output)).await?.map_err(anyhow::Error::from)
}
