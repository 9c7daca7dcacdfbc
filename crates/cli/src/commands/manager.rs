//! `alchemiscale compute manager -c manager.yaml`: run a compute manager (see the
//! `alchemiscale_manager` crate for the settings file and the loop).
//!
//! Exit status: 0 after a signal (its services are stopped first), a SHUTDOWN instruction
//! or `--max-cycles`; 1 when the API stays unreachable or refuses the registration (a
//! manager of that name is registered: `--steal` replaces an OK one); 2 for usage errors,
//! including a settings file with an unknown or invalid key.

use std::path::PathBuf;

use alchemiscale_manager::backend::local::LocalBackend;
use alchemiscale_manager::backend::slurm::SlurmBackend;
use alchemiscale_manager::backend::{Backend, LaunchSpec};
use alchemiscale_manager::manager::prepare;
use alchemiscale_manager::{BackendSettings, Manager, ManagerSettings};
use alchemiscale_model::ComputeManagerId;
use anyhow::Context;
use clap::Args;

/// Start a compute manager.
#[derive(Debug, Args)]
pub struct ManagerCommand {
    /// YAML settings file: upstream's compute-manager keys (`name`, `max_compute_services`,
    /// `max_submit_per_cycle`, `sleep_interval`, …), a `service` section (the settings every
    /// started compute service gets) and a `backend` section (`kind: local` or `kind: slurm`).
    #[arg(short = 'c', long = "config-file", value_parser = super::compute::readable_file)]
    pub config_file: PathBuf,
    /// Replace a registered manager of the same name (one that crashed or was killed).
    #[arg(long)]
    pub steal: bool,
    /// Stop after this many cycles (for tests and cron).
    #[arg(long)]
    pub max_cycles: Option<u64>,
}

/// Read and validate the settings (before anything starts: errors are usage errors).
pub fn read_settings(cmd: &ManagerCommand) -> anyhow::Result<ManagerSettings> {
    ManagerSettings::from_file(&cmd.config_file).with_context(|| format!("settings file {}", cmd.config_file.display()))
}

pub async fn run(cmd: ManagerCommand, settings: ManagerSettings) -> anyhow::Result<()> {
    let id = ComputeManagerId::mint(&settings.name).map_err(|e| anyhow::anyhow!("{e}"))?;
    alchemiscale_compute::logging::init_with(
        &id.to_string(),
        settings.loglevel,
        settings.logfile.as_deref(),
        &["alchemiscale_manager", "alchemiscale_client", "alchemiscale"],
    )
    .map_err(anyhow::Error::msg)?;
    let spec = prepare(&settings)?;
    match settings.backend.clone() {
        BackendSettings::Local(s) => drive(cmd, settings, id, spec.clone(), LocalBackend::new(spec, &s)?).await,
        BackendSettings::Slurm(s) => drive(cmd, settings, id, spec.clone(), SlurmBackend::new(spec, s)?).await,
    }
}

async fn drive<B: Backend + 'static>(
    cmd: ManagerCommand,
    settings: ManagerSettings,
    id: ComputeManagerId,
    spec: LaunchSpec,
    backend: B,
) -> anyhow::Result<()> {
    let manager = Manager::new(settings, id, &spec, backend)?;
    let stop = manager.stop_handle();
    let signalled = super::compute::signals()?;
    tokio::spawn(async move {
        if signalled.await.is_ok() {
            tracing::info!("Caught signal; stopping the manager and its services");
            stop.stop();
        }
    });
    let end = manager.run(cmd.steal, cmd.max_cycles).await?;
    tracing::info!("Compute manager ended: {end:?}");
    Ok(())
}
