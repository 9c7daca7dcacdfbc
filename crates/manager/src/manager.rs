//! The manager loop (in upstream's words; the order of things is upstream's
//! `ComputeManager`): register (optionally stealing the name), then each cycle ask for an
//! instruction, start services on OK per the sizing rule, report status OK with the
//! saturation, sleep; stop on SHUTDOWN or a signal; deregister on the way out.
//!
//! Where we differ, and why:
//!
//! * The services counted against `max_compute_services` are the larger of the services
//!   the server says the manager manages and the backend's own count, which includes
//!   services that have not registered yet (a starting process, a pending Slurm job).
//!   Upstream counts registered services only, so a slow queue makes it submit again
//!   every cycle.
//! * A backend failure (`sbatch` refused, Slurm down, a program that cannot start) is
//!   reported as status ERROR with its text, and the manager tries again next cycle
//!   (status OK again once it works). Upstream ends the manager on any error, leaving an
//!   ERROR registration that blocks the name for a day.
//! * An API failure that outlasts the retries ends the manager, as upstream: status ERROR
//!   with the error (if the API can still be reached), exit with an error.
//! * On a stop request (signal) the manager stops its services (they deregister and give
//!   their tasks back), reports OK if its last report was an ERROR from the backend (a
//!   requested stop is not a crash, and an ERROR registration would survive
//!   deregistration), then deregisters. On SHUTDOWN, or when ended by an error, its
//!   services are left to finish their work and leave when idle (`max_empty_claims`).

use std::path::{Path, PathBuf};

use alchemiscale_client::compute::RetryPolicy;
use alchemiscale_client::{Client, ClientError};
use alchemiscale_compute::StopHandle;
use alchemiscale_model::manager::{ManagerInstruction, Sizing};
use alchemiscale_model::status::ComputeManagerStatus;
use alchemiscale_model::{ComputeManagerId, Scope};
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendError, LaunchSpec};
use crate::settings::{ManagerSettings, SettingsError};

/// Why a manager stopped (when it stopped without an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerEnd {
    /// A signal ([`StopHandle::stop`]).
    Stopped,
    /// The server answered SHUTDOWN (the registration is gone).
    Shutdown,
    /// `max_cycles` cycles ran.
    Cycles,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Setup(String),
    #[error("{what} failed: {source}")]
    Api { what: &'static str, source: ClientError },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What one cycle did.
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    /// Services counted (after starting new ones).
    pub services: u64,
    /// Services started this cycle.
    pub started: u64,
    /// Claimable tasks (OK instructions).
    pub num_tasks: Option<i64>,
}

pub struct Manager<B: Backend> {
    settings: ManagerSettings,
    id: ComputeManagerId,
    client: Client,
    policy: RetryPolicy,
    backend: B,
    stop: StopHandle,
    scopes: Vec<Scope>,
    protocols: Vec<String>,
    /// The last status report was an ERROR from the backend.
    backend_error: bool,
    /// Where the services' settings file goes.
    service_config: PathBuf,
}

/// Creates the work directory and says how a service is started; the services' settings
/// file (`<work_dir>/service.yaml`) is written by [`Manager::run`] once the manager is
/// registered, carrying its id.
pub fn prepare(settings: &ManagerSettings) -> Result<LaunchSpec, ManagerError> {
    let setup = |what: &str, p: &Path, e: std::io::Error| ManagerError::Setup(format!("cannot {what} {}: {e}", p.display()));
    std::fs::create_dir_all(&settings.work_dir).map_err(|e| setup("create", &settings.work_dir, e))?;
    let work_dir = std::path::absolute(&settings.work_dir).map_err(|e| setup("resolve", &settings.work_dir, e))?;
    let program = match &settings.alchemiscale {
        Some(p) => std::path::absolute(p).map_err(|e| setup("resolve", p, e))?,
        None => std::env::current_exe().map_err(|e| ManagerError::Setup(format!("cannot locate the alchemiscale executable: {e}")))?,
    };
    Ok(LaunchSpec { program, config: work_dir.join("service.yaml"), work_dir, manager_name: settings.name.clone() })
}

/// The services' settings with `compute_manager_id`, readable by the owner only (it holds
/// the compute identity's key), replaced atomically.
fn write_service_settings(settings: &ManagerSettings, id: &ComputeManagerId, path: &PathBuf) -> Result<(), ManagerError> {
    let mut yaml = settings.service_yaml.clone();
    yaml.insert("compute_manager_id".into(), id.to_string().into());
    let text = serde_yaml_ng::to_string(&yaml).map_err(|e| ManagerError::Setup(e.to_string()))?;
    write_private(path, &text).map_err(|e| ManagerError::Setup(format!("cannot write {}: {e}", path.display())))
}

fn write_private(path: &PathBuf, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("yaml.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl<B: Backend> Manager<B> {
    /// A manager with id `id` whose backend starts services as `spec` says (see
    /// [`prepare`]).
    pub fn new(settings: ManagerSettings, id: ComputeManagerId, spec: &LaunchSpec, backend: B) -> Result<Manager<B>, ManagerError> {
        let s = &settings.service;
        let mut client = Client::with_verify(&s.api_url, &s.identifier, &s.key, s.client_verify)
            .map_err(|e| ManagerError::Setup(format!("invalid api_url: {e}")))?;
        client.max_retries = 0; // the manager applies `RetryPolicy` itself
        Ok(Manager {
            policy: settings.retry,
            scopes: s.scopes.clone().unwrap_or_default(),
            protocols: s.protocols.clone().unwrap_or_default(),
            settings,
            id,
            client,
            backend,
            stop: StopHandle::new(),
            backend_error: false,
            service_config: spec.config.clone(),
        })
    }

    pub fn id(&self) -> &ComputeManagerId {
        &self.id
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn sizing(&self) -> Sizing {
        self.settings.sizing()
    }

    /// Register, cycle until stopped, deregister.
    pub async fn run(mut self, steal: bool, max_cycles: Option<u64>) -> Result<ManagerEnd, ManagerError> {
        info!("Starting compute manager '{}' ({} backend)", self.id, self.backend.kind());
        let registered = self.policy.run(|| self.client.register_manager(&self.id, steal)).await;
        registered.map_err(|source| ManagerError::Api { what: "registration", source })?;
        info!("Registered compute manager '{}'", self.id);
        if let Err(e) = write_service_settings(&self.settings, &self.id, &self.service_config) {
            let _ = self.client.deregister_manager(&self.id).await;
            return Err(e);
        }
        let outcome = self.main_loop(max_cycles).await;
        if let Err(e) = &outcome {
            error!("Compute manager failed: {e}");
            let detail = format!("{e}");
            if let Err(report) = self.client.update_manager_status(&self.id, ComputeManagerStatus::Error, Some(&detail), None).await {
                warn!("Could not report the ERROR status either: {report}");
            }
        }
        if matches!(outcome, Ok(ManagerEnd::Stopped)) {
            if let Err(e) = self.backend.stop_all().await {
                warn!("Stopping the services: {e}");
            }
            if self.backend_error {
                let saturation = self.census_total().await.map(|n| self.sizing().saturation(n)).unwrap_or(0.0);
                let _ = self.client.update_manager_status(&self.id, ComputeManagerStatus::Ok, None, Some(saturation)).await;
            }
        }
        info!("Deregistering '{}'", self.id);
        let deregistered = self.policy.run(|| self.client.deregister_manager(&self.id)).await;
        match (outcome, deregistered) {
            (Ok(end), Ok(_)) => {
                info!("Deregistration successful");
                Ok(end)
            }
            (Ok(_), Err(source)) => Err(ManagerError::Api { what: "deregistration", source }),
            (Err(e), _) => Err(e),
        }
    }

    async fn census_total(&mut self) -> Option<u64> {
        self.backend.census().await.ok().map(|c| c.total())
    }

    async fn main_loop(&mut self, max_cycles: Option<u64>) -> Result<ManagerEnd, ManagerError> {
        let mut count = 0u64;
        loop {
            if self.stop.is_stopped() {
                return Ok(ManagerEnd::Stopped);
            }
            let stop = self.stop.clone();
            let cycle = tokio::select! {
                c = self.cycle() => c?,
                _ = stop.wait() => return Ok(ManagerEnd::Stopped),
            };
            if cycle.is_none() {
                return Ok(ManagerEnd::Shutdown);
            }
            count += 1;
            if max_cycles.is_some_and(|m| count >= m) {
                info!("Reached maximum number of cycles");
                return Ok(ManagerEnd::Cycles);
            }
            if self.stop.sleep(self.settings.sleep_interval).await {
                return Ok(ManagerEnd::Stopped);
            }
        }
    }

    /// One cycle; `None` on SHUTDOWN. API failures (after retries) are errors; backend
    /// failures are reported as status ERROR and the cycle ends normally.
    pub async fn cycle(&mut self) -> Result<Option<Cycle>, ManagerError> {
        let census = self.backend.census().await;
        let api = |what| move |source| ManagerError::Api { what, source };
        let instruction = self
            .policy
            .run(|| self.client.manager_instruction(&self.id, &self.scopes, &self.protocols))
            .await
            .map_err(api("instruction"))?;
        let mut backend_failure = census.as_ref().err().map(ToString::to_string);
        let known = census.as_ref().map(|c| c.total()).unwrap_or(0);
        let cycle = match instruction {
            ManagerInstruction::Shutdown { message } => {
                info!("Received shutdown message: \"{message}\"");
                return Ok(None);
            }
            ManagerInstruction::Skip { compute_service_ids } => {
                info!("Received skip instruction (a service is over the failure limit)");
                Cycle { services: known.max(compute_service_ids.len() as u64), started: 0, num_tasks: None }
            }
            ManagerInstruction::Ok { compute_service_ids, num_tasks } => {
                let active = known.max(compute_service_ids.len() as u64);
                let target = if backend_failure.is_some() { 0 } else { self.sizing().services_to_start(num_tasks, active) };
                let mut started = 0;
                if target > 0 {
                    match self.backend.start(target).await {
                        Ok(n) => started = n,
                        Err(e) => backend_failure = Some(e.to_string()),
                    }
                }
                info!(
                    "Instruction OK: {num_tasks} tasks claimable, {} registered services, {known} known to the backend; started {started} of {target}",
                    compute_service_ids.len()
                );
                Cycle { services: active + started, started, num_tasks: Some(num_tasks) }
            }
        };
        let (status, saturation) = match &backend_failure {
            Some(detail) => {
                error!("{} backend: {detail}", self.backend.kind());
                (ComputeManagerStatus::Error, None)
            }
            None => (ComputeManagerStatus::Ok, Some(self.sizing().saturation(cycle.services))),
        };
        let reported =
            self.policy.run(|| self.client.update_manager_status(&self.id, status, backend_failure.as_deref(), saturation)).await;
        reported.map_err(api("status update"))?;
        self.backend_error = backend_failure.is_some();
        Ok(Some(cycle))
    }
}
