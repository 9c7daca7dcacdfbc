//! Where a manager's compute services run.
//!
//! A backend starts services, counts the ones it started that are still alive (or still
//! waiting for resources), and stops them all when the manager is told to stop. Each
//! service is `alchemiscale compute synchronous -c <work_dir>/service.yaml`: the same
//! settings for all, written by the manager, carrying its id.
//!
//! * [`local`] — child processes of the manager.
//! * [`slurm`] — one Slurm batch job per service (`sbatch`, `squeue`, `scancel`).
//!
//! # Adding a backend (Kubernetes, PBS, LSF, …)
//!
//! 1. Write a settings struct (`serde::Deserialize`, `deny_unknown_fields`) and a type
//!    implementing [`Backend`] in a new module here: `census` asks the scheduler how many
//!    of this manager's services exist and how many still wait for resources (find them
//!    by a name derived from the manager's name, as the Slurm backend does, so a
//!    restarted manager sees its predecessor's), `start` submits up to `n` and returns how
//!    many it did (0 while earlier submissions are still pending, so a stuck queue does
//!    not fill up), `stop_all` cancels them so the services get SIGTERM (they deregister
//!    and give their tasks back).
//! 2. Add a variant to [`crate::settings::BackendSettings`] and a branch where the CLI
//!    builds the backend (`alchemiscale compute manager`).
//! 3. Errors the scheduler reports become [`BackendError`]s: the manager reports them as
//!    its ERROR status and tries again next cycle.

pub mod local;
pub mod slurm;

use std::future::Future;
use std::path::PathBuf;

/// How a service is started: `<program> compute synchronous -c <config>`.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// The `alchemiscale` executable.
    pub program: PathBuf,
    /// The services' settings file (absolute).
    pub config: PathBuf,
    /// The manager's work directory (absolute): logs, job scripts, bookkeeping.
    pub work_dir: PathBuf,
    /// The manager's name (jobs are named after it).
    pub manager_name: String,
}

impl LaunchSpec {
    /// The command line of one service.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        vec!["compute".into(), "synchronous".into(), "-c".into(), self.config.clone().into_os_string()]
    }
}

/// The services a backend knows of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Running (or starting, or ending).
    pub running: u64,
    /// Waiting for resources (a queued batch job).
    pub pending: u64,
}

impl Census {
    pub fn total(&self) -> u64 {
        self.running + self.pending
    }
}

/// A failure of the scheduler or the machine (not of the API).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// A place to run compute services. See the module documentation.
pub trait Backend: Send {
    /// For logs: `local`, `slurm`.
    fn kind(&self) -> &'static str;
    /// The services this backend started (or found from an earlier manager of the same
    /// name) that have not ended; ended ones are forgotten.
    fn census(&mut self) -> impl Future<Output = Result<Census, BackendError>> + Send;
    /// Start up to `n` services; returns how many were started.
    fn start(&mut self, n: u64) -> impl Future<Output = Result<u64, BackendError>> + Send;
    /// Stop every service so that it deregisters and gives its tasks back; returns once
    /// they are gone (or, for a scheduler, once it has been told).
    fn stop_all(&mut self) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// Run a program to completion and return its standard output; a failure to start it or
/// a non-zero exit is a [`BackendError`] quoting its standard error.
pub(crate) async fn run_program(program: &str, args: &[String], what: &str) -> Result<String, BackendError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| BackendError(format!("{what}: cannot run `{program}`: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(BackendError(format!("{what}: `{program} {}` failed ({}): {}", args.join(" "), out.status, stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
