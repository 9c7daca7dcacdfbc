//! The compute service loop, in the manner of upstream's
//! `SynchronousComputeService`: register, heartbeat in the background, claim, execute,
//! push, until stopped or a limit is reached; then deregister.
//!
//! Where we deliberately do better than upstream:
//!
//! * **Every task runs in a child process** ([`crate::executor`]) with an optional time
//!   limit (`task_timeout`). A crash, a hang past the limit or unusable output becomes a
//!   failed ProtocolDAGResult built by the service ([`crate::result::failure_blob`]) and
//!   pushed like any other, so the task goes to `error` and restart patterns apply —
//!   instead of taking the service down and leaving the task `running`.
//! * **Work nobody wants any more is stopped** (upstream issue #301): before running a
//!   claimed task, and every `wanted_check_interval` while it runs, the service asks the
//!   compute API whether the task is still wanted (running, claimed by this service,
//!   actioned on a hub of an active network); if not, the child is killed (or never
//!   started) and the task released, not pushed. Claims do not look at network state, so
//!   a batch of only unwanted tasks is followed by `sleep_interval`, not a new claim.
//! * **No task is left `running`**: on a stop (signal, [`StopHandle::stop`]) the running
//!   child is killed and the service deregisters, which returns its claimed tasks to
//!   `waiting`; every sleep, and every retry back-off of a claim or a download, wakes at
//!   once on a stop. A result upload in progress is allowed to finish.
//! * A task the server will not hand over (C13 refused with a 4xx) or whose result it
//!   refuses (C14 4xx) is released and logged, and the service backs off for
//!   `sleep_interval`; only three such refusals in a row end the service (with an error).
//! * An executor that cannot be started at all (e.g. no Python interpreter) is a
//!   configuration error: the task is released and the service stops with an error,
//!   rather than failing every task it claims.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alchemiscale_client::compute::{RetryPolicy, TaskTransformation};
use alchemiscale_client::{Client, ClientError};
use alchemiscale_model::chain::{as_reference, KeyedChain};
use alchemiscale_model::json::Value;
use alchemiscale_model::pdr::read_result;
use alchemiscale_model::{ComputeManagerId, ComputeServiceId, GufeKey, ScopedKey};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::child::{TaskRequest, DAG_FILE, DAG_KEY_FILE, EXTENDS_FILE, REQUEST_FILE, RESULT_FILE, RUNNING_UNIT_FILE, TRANSFORMATION_FILE};
use crate::executor::{describe_exit, supervise, tail, Ended, ExecutorConfig, ExecutorKind};
use crate::result::{failure_blob, ExecutedDag, ServiceFailure};
use crate::settings::{Settings, SettingsError};
use crate::task_logs::{self, OutputFiles};

/// Largest result the service accepts from an executor, decompressed.
pub const MAX_RESULT_BYTES: usize = 1 << 30;
/// How much of an executor's standard error a failure report quotes.
const STDERR_TAIL_BYTES: u64 = 8000;
/// Refused tasks in a row after which the service gives up (something is systematically
/// wrong, e.g. the identity lost its scopes).
const MAX_CONSECUTIVE_REFUSALS: u32 = 3;
/// Time limit of one "is the task still wanted?" request.
const WANTED_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Tells a running service to stop; cheap to clone, usable from signal handlers and
/// other tasks. Stopping is sticky.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl Default for StopHandle {
    fn default() -> Self {
        StopHandle::new()
    }
}

impl StopHandle {
    pub fn new() -> StopHandle {
        StopHandle(Arc::new(watch::channel(false).0))
    }
    /// Ask the service to stop: sleeps wake, a running task's child is killed.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
    /// Resolves once [`StopHandle::stop`] has been called.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
    /// Sleep for `d` unless stopped first; true if stopped.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_stopped(),
            _ = self.wait() => true,
        }
    }
}

/// Why a service run ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// [`StopHandle::stop`] (a signal).
    Stopped,
    /// `max_tasks` tasks were executed.
    MaxTasks,
    /// `max_time` seconds passed.
    MaxTime,
    /// `max_empty_claims` claims in a row brought no task.
    Idle,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Tasks whose result was pushed (these count towards `max_tasks`).
    pub executed: u64,
    /// … of which successful.
    pub succeeded: u64,
    /// … of which failed (including failures reported by the service).
    pub failed: u64,
    /// Tasks given back: no longer wanted, or refused by the server.
    pub released: u64,
    /// Why the run ended (`None` only while running).
    pub stop_reason: Option<StopReason>,
}

/// How one task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// A result was pushed; its ProtocolDAGResultRef and whether it was a success.
    Pushed { pdrr: ScopedKey, ok: bool },
    /// The task was given back (released) without a result.
    Released,
    /// The server refused the task's transformation or its result; it was released.
    Refused,
    /// The service was stopped while the task ran; deregistration returns it.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot create {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("{what} failed: {source}")]
    Api { what: &'static str, source: ClientError },
    #[error("cannot start the {kind} executor `{program}`: {source}")]
    Executor { kind: &'static str, program: PathBuf, source: std::io::Error },
    #[error("cannot prepare the task directory: {0}")]
    TaskDirectory(std::io::Error),
    #[error("the compute API refused {0} tasks in a row (see the log); stopping")]
    Refused(u32),
}

fn api(what: &'static str) -> impl FnOnce(ClientError) -> ServiceError {
    move |source| ServiceError::Api { what, source }
}

/// A 4xx answer: the server understood and refused; retrying will not help.
fn refused(e: &ClientError) -> bool {
    matches!(e.status(), Some(400..=499))
}

/// One compute service.
pub struct Service {
    settings: Settings,
    id: ComputeServiceId,
    manager: Option<ComputeManagerId>,
    client: Arc<Client>,
    executors: ExecutorConfig,
    policy: RetryPolicy,
    stop: StopHandle,
    shared_basedir: PathBuf,
    scratch_basedir: PathBuf,
    /// Where executions' output is kept (absolute), if anywhere.
    task_logs: Option<task_logs::Limits>,
}

/// What the service learns from C13 before running a task.
struct Prepared {
    chain_json: String,
    transformation_key: Option<String>,
    protocol: Option<String>,
    extends: Option<Vec<u8>>,
    /// Why the task cannot be run, if it cannot.
    problem: Option<String>,
}

impl Prepared {
    fn new(t: TaskTransformation) -> Prepared {
        let chain_json = t.chain.to_python_json();
        let mut p = Prepared { chain_json, transformation_key: None, protocol: None, extends: t.extends, problem: None };
        match KeyedChain::from_value(t.chain) {
            Err(e) => p.problem = Some(format!("the transformation's keyed chain is invalid: {e}")),
            Ok(chain) => {
                let root = chain.root();
                p.transformation_key = Some(root.key.to_string());
                p.protocol = root
                    .dict
                    .get("protocol")
                    .and_then(as_reference)
                    .and_then(Value::as_str)
                    .and_then(|k| GufeKey::new(k).ok())
                    .and_then(|k| chain.get(&k))
                    .map(|e| e.qualname().to_string());
                if p.protocol.is_none() {
                    p.problem = Some(format!("{} has no protocol", root.key));
                }
            }
        }
        p
    }
}

impl Service {
    /// Validate the settings, create the shared and scratch base directories and mint the
    /// service id `<name>-<uuid4 hex>`. Nothing is sent to the server yet. The python
    /// executor's interpreter is `executor_python` of the settings (replacing
    /// `executors.python`).
    pub fn new(settings: Settings, mut executors: ExecutorConfig) -> Result<Service, ServiceError> {
        settings.validate()?;
        executors.python = settings.executor_python.clone();
        executors.env = settings.executor_env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut task_logs = settings.task_logs();
        let mut dirs = Vec::new();
        for p in [&settings.shared_basedir, &settings.scratch_basedir].into_iter().chain(task_logs.as_ref().map(|l| &l.dir)) {
            let abs = std::path::absolute(p).map_err(|source| ServiceError::Directory { path: p.clone(), source })?;
            std::fs::create_dir_all(&abs).map_err(|source| ServiceError::Directory { path: abs.clone(), source })?;
            dirs.push(abs);
        }
        if let Some(logs) = task_logs.as_mut() {
            logs.dir = dirs.pop().unwrap_or_default();
        }
        let id = ComputeServiceId::mint(&settings.name).map_err(|e| SettingsError::Invalid { key: "name", message: e.to_string() })?;
        let manager =
            match &settings.compute_manager_id {
                None => None,
                Some(m) => Some(m.parse().map_err(|e: alchemiscale_model::KeyError| SettingsError::Invalid {
                    key: "compute_manager_id",
                    message: e.to_string(),
                })?),
            };
        let mut client = Client::with_verify(&settings.api_url, &settings.identifier, &settings.key, settings.client_verify)
            .map_err(|e| SettingsError::Invalid { key: "api_url", message: e.to_string() })?;
        client.max_retries = 0; // the service applies `RetryPolicy` itself
        let policy = settings.retry_policy();
        let scratch_basedir = dirs.pop().unwrap_or_default();
        let shared_basedir = dirs.pop().unwrap_or_default();
        Ok(Service {
            settings,
            id,
            manager,
            client: Arc::new(client),
            executors,
            policy,
            stop: StopHandle::new(),
            shared_basedir,
            scratch_basedir,
            task_logs,
        })
    }

    /// This service's registration id.
    pub fn id(&self) -> &ComputeServiceId {
        &self.id
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A handle that stops [`Service::run`].
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Register, heartbeat, claim and execute until stopped or a limit is reached, then
    /// deregister. An error (the API unreachable after retries, an executor that cannot
    /// start) ends the run after deregistering.
    pub async fn run(&self) -> Result<RunSummary, ServiceError> {
        let started = Instant::now();
        info!("Starting up service '{}'", self.settings.name);
        let registration = self.policy.run(|| self.client.register(&self.id, self.manager.as_ref()));
        tokio::select! {
            r = registration => { r.map_err(api("registration"))?; }
            _ = self.stop.wait() => {
                // the registration may have reached the server: take it back (once)
                let _ = self.client.deregister(&self.id).await;
                info!("Stopped before the registration completed");
                return Ok(RunSummary { stop_reason: Some(StopReason::Stopped), ..RunSummary::default() });
            }
        }
        info!("Registered service with registration '{}'", self.id);
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.client.clone(),
            self.id.clone(),
            self.policy,
            Duration::from_secs(self.settings.heartbeat_interval),
            self.stop.clone(),
        ));

        let mut summary = RunSummary::default();
        let result = self.main_loop(started, &mut summary).await;
        match &result {
            Ok(StopReason::Stopped) => info!("Service stopping."),
            Ok(reason) => info!("Service stopping: {reason:?} reached"),
            Err(e) => error!("Unexpected error: {e}"),
        }
        heartbeat.abort();
        let _ = heartbeat.await;

        info!("Deregistering service with registration '{}'", self.id);
        let deregistered = self.policy.run(|| self.client.deregister(&self.id)).await;
        match (result, deregistered) {
            (Ok(reason), Ok(_)) => {
                info!("Deregistration successful");
                summary.stop_reason = Some(reason);
                Ok(summary)
            }
            (Ok(_), Err(e)) => Err(ServiceError::Api { what: "deregistration", source: e }),
            (Err(e), Ok(_)) => Err(e),
            (Err(e), Err(d)) => {
                error!("Deregistration failed too: {d}");
                Err(e)
            }
        }
    }

    fn limit_reached(&self, started: Instant, summary: &RunSummary) -> Option<StopReason> {
        if let Some(max) = self.settings.max_tasks {
            if summary.executed >= max {
                info!("Performed {} tasks; at or beyond max tasks = {max}", summary.executed);
                return Some(StopReason::MaxTasks);
            }
        }
        if let Some(max) = self.settings.max_time {
            let ran = started.elapsed().as_secs_f64();
            if ran >= max as f64 {
                info!("Ran for {ran:.1} seconds; at or beyond max time = {max} seconds");
                return Some(StopReason::MaxTime);
            }
        }
        None
    }

    async fn main_loop(&self, started: Instant, summary: &mut RunSummary) -> Result<StopReason, ServiceError> {
        let scopes = self.settings.claim_scopes();
        let count = usize::try_from(self.settings.claim_limit).unwrap_or(usize::MAX);
        let mut refusals = 0u32;
        let mut empty_claims = 0u64;
        loop {
            if self.stop.is_stopped() {
                return Ok(StopReason::Stopped);
            }
            if let Some(reason) = self.limit_reached(started, summary) {
                return Ok(reason);
            }
            debug!("Claiming tasks");
            let claim = self.policy.run(|| {
                self.client.claim_tasks(
                    &scopes,
                    self.settings.scopes_exclude.as_deref(),
                    &self.id,
                    count,
                    self.settings.protocols.as_deref(),
                )
            });
            let claimed = tokio::select! {
                r = claim => r.map_err(api("claiming tasks"))?,
                _ = self.stop.wait() => return Ok(StopReason::Stopped),
            };
            let got_none = claimed.as_ref().is_none_or(|c| c.iter().all(Option::is_none));
            empty_claims = if got_none { empty_claims + 1 } else { 0 };
            if let Some(max) = self.settings.max_empty_claims {
                if empty_claims >= max {
                    info!("{empty_claims} claims in a row brought no task; at max empty claims = {max}");
                    return Ok(StopReason::Idle);
                }
            }
            let Some(claimed) = claimed else {
                info!("No tasks claimed. Compute API denied request; sleeping for {} seconds", self.settings.deep_sleep_interval);
                if self.stop.sleep(Duration::from_secs(self.settings.deep_sleep_interval)).await {
                    return Ok(StopReason::Stopped);
                }
                continue;
            };
            let tasks: Vec<ScopedKey> = claimed.into_iter().flatten().collect();
            if tasks.is_empty() {
                debug!("No tasks claimed; sleeping for {} seconds", self.settings.sleep_interval);
                if self.stop.sleep(Duration::from_secs(self.settings.sleep_interval)).await {
                    return Ok(StopReason::Stopped);
                }
                continue;
            }
            info!("Claimed {} tasks", tasks.len());
            let mut ran_any = false;
            for task in &tasks {
                // tasks still claimed when we leave here are returned by deregistration
                if self.stop.is_stopped() {
                    return Ok(StopReason::Stopped);
                }
                // Claims do not look at network state, but work on an inactive network is
                // not wanted: give such a task back before spending anything on it.
                if self.wanted(task).await == Some(false) {
                    info!("Task '{task}' is not wanted (cancelled, or its network is not active); releasing it");
                    self.release(task).await;
                    summary.released += 1;
                    continue;
                }
                ran_any = true;
                match self.execute(task).await? {
                    TaskOutcome::Pushed { ok, .. } => {
                        summary.executed += 1;
                        if ok {
                            summary.succeeded += 1;
                        } else {
                            summary.failed += 1;
                        }
                    }
                    TaskOutcome::Released => summary.released += 1,
                    TaskOutcome::Refused => {
                        summary.released += 1;
                        refusals += 1;
                        if refusals >= MAX_CONSECUTIVE_REFUSALS {
                            return Err(ServiceError::Refused(refusals));
                        }
                        // back off: a released task may come straight back to us
                        if self.stop.sleep(Duration::from_secs(self.settings.sleep_interval.max(1))).await {
                            return Ok(StopReason::Stopped);
                        }
                        continue;
                    }
                    TaskOutcome::Interrupted => return Ok(StopReason::Stopped),
                }
                refusals = 0;
                if let Some(reason) = self.limit_reached(started, summary) {
                    return Ok(reason);
                }
            }
            // only unwanted tasks came: do not claim them straight back
            if !ran_any && self.stop.sleep(Duration::from_secs(self.settings.sleep_interval)).await {
                return Ok(StopReason::Stopped);
            }
        }
    }

    /// Is `task` still wanted from this service? `None` when the server cannot tell us.
    async fn wanted(&self, task: &ScopedKey) -> Option<bool> {
        match tokio::time::timeout(WANTED_REQUEST_TIMEOUT, self.client.task_wanted(task, &self.id)).await {
            Ok(Ok(w)) => Some(w),
            Ok(Err(e)) => {
                warn!("Could not check whether task '{task}' is still wanted: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Give a task back (best effort: failures are logged).
    async fn release(&self, task: &ScopedKey) {
        match self.policy.run(|| self.client.release_tasks(&self.id, std::slice::from_ref(task))).await {
            Ok(r) if r.first().is_some_and(Option::is_some) => info!("Released task '{task}'"),
            Ok(_) => info!("Task '{task}' was no longer claimed by this service"),
            Err(e) => warn!("Releasing task '{task}' failed: {e}"),
        }
    }

    /// Execute one claimed task and push its result.
    pub async fn execute(&self, task: &ScopedKey) -> Result<TaskOutcome, ServiceError> {
        info!("Executing task '{task}'...");
        let fetched = tokio::select! {
            r = self.policy.run(|| self.client.retrieve_task_transformation(task)) => r,
            _ = self.stop.wait() => return Ok(TaskOutcome::Interrupted),
        };
        let prepared = match fetched {
            Ok(t) => Prepared::new(t),
            Err(e) if refused(&e) => {
                error!("The compute API refused the transformation of task '{task}': {e}");
                self.release(task).await;
                return Ok(TaskOutcome::Refused);
            }
            Err(e) => return Err(ServiceError::Api { what: "retrieving a task's transformation", source: e }),
        };

        let (blob, ok) = match &prepared.problem {
            Some(problem) => {
                error!("Cannot run task '{task}': {problem}");
                (self.failure(task, &prepared, "ValueError", problem, "", None), false)
            }
            None => match self.run_child(task, &prepared).await? {
                Ran::Result { blob, ok } => (blob, ok),
                Ran::Failure { exception, message, detail, dag } => {
                    let unit = dag.as_ref().map(|d| format!(" in unit {}", d.failed_unit_name())).unwrap_or_default();
                    warn!("Task '{task}' failed{unit}: {exception}: {message}");
                    (self.failure(task, &prepared, &exception, &message, &detail, dag.as_ref()), false)
                }
                Ran::Stopped => {
                    info!("Stopped while running task '{task}'; deregistration returns it to waiting");
                    return Ok(TaskOutcome::Interrupted);
                }
                Ran::Unwanted => {
                    info!("Task '{task}' is no longer wanted (cancelled, or its network is not active); stopped it");
                    self.release(task).await;
                    return Ok(TaskOutcome::Released);
                }
            },
        };

        match self.policy.run(|| self.client.set_task_result(task, &blob, &self.id)).await {
            Ok(pdrr) => {
                info!("Pushed result '{pdrr}' for task '{task}' ({})", if ok { "SUCCESS" } else { "FAILURE" });
                Ok(TaskOutcome::Pushed { pdrr, ok })
            }
            Err(e) if refused(&e) => {
                error!("The compute API refused the result of task '{task}': {e}");
                self.release(task).await;
                Ok(TaskOutcome::Refused)
            }
            Err(e) => Err(ServiceError::Api { what: "pushing a result", source: e }),
        }
    }

    /// A service-built failure for `task`, against the running unit of `dag` when the
    /// executor recorded its DAG.
    fn failure(&self, task: &ScopedKey, p: &Prepared, exception: &str, message: &str, detail: &str, dag: Option<&ExecutedDag>) -> Vec<u8> {
        let mut traceback = format!("{exception}: {message}\n");
        traceback.push_str(&format!("\n(reported by compute service {} for task {task})\n", self.id));
        if !detail.is_empty() {
            traceback.push('\n');
            traceback.push_str(detail);
            if !detail.ends_with('\n') {
                traceback.push('\n');
            }
        }
        // (the extended result's key is read only here, and only without a DAG, which
        // names it: decompressing and analysing it for every task that extends one would
        // be wasted on the tasks that succeed)
        let extends_key = match dag {
            Some(_) => None,
            None => p.extends.as_ref().and_then(|b| read_result(b.clone(), MAX_RESULT_BYTES).ok()).map(|r| r.summary.key.to_string()),
        };
        let failure = ServiceFailure { exception, message, traceback: &traceback };
        failure_blob(dag, Some(&task.to_string()), p.transformation_key.as_deref(), extends_key.as_deref(), failure)
    }

    /// Write the task directory (`<scratch_basedir>/alchemiscale-task-*`), run the executor
    /// under supervision with its output kept in `task_logs_dir` (or, when none is kept,
    /// in the task directory), clean up, and read what it produced. With `keep_scratch`
    /// the task directory (inputs, the DAG) is kept as well.
    async fn run_child(&self, task: &ScopedKey, p: &Prepared) -> Result<Ran, ServiceError> {
        let protocol = p.protocol.as_deref().unwrap_or_default();
        let kind = ExecutorKind::for_protocol(protocol);
        let dir =
            tempfile::Builder::new().prefix("alchemiscale-task-").tempdir_in(&self.scratch_basedir).map_err(ServiceError::TaskDirectory)?;
        let request = TaskRequest {
            task: task.to_string(),
            transformation_key: p.transformation_key.clone().unwrap_or_default(),
            protocol: protocol.to_string(),
            shared_basedir: self.shared_basedir.clone(),
            scratch_basedir: self.scratch_basedir.clone(),
            keep_shared: self.settings.keep_shared,
            keep_scratch: self.settings.keep_scratch,
            n_retries: self.settings.n_retries,
            extends: p.extends.as_ref().map(|_| EXTENDS_FILE.to_string()),
        };
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).map_err(ServiceError::TaskDirectory);
        write(REQUEST_FILE, serde_json::to_string_pretty(&request).unwrap_or_default().as_bytes())?;
        write(TRANSFORMATION_FILE, p.chain_json.as_bytes())?;
        if let Some(b) = &p.extends {
            write(EXTENDS_FILE, b)?;
        }
        let output = dir.path().join(RESULT_FILE);
        let program = self.executors.program(kind).to_path_buf();
        let start_error = |source| ServiceError::Executor { kind: kind.name(), program: program.clone(), source };
        let cmd = self.executors.command(kind, dir.path(), &output).map_err(start_error)?;

        info!("Running task '{task}' ({protocol}) with the {} executor", kind.name());
        let files = match &self.task_logs {
            Some(logs) => {
                let files = OutputFiles::kept(&logs.dir, task, chrono::Utc::now());
                info!("Output of task '{task}': {} and {}", files.stdout.display(), files.stderr.display());
                files
            }
            None => OutputFiles::in_dir(dir.path()),
        };
        let timeout = self.settings.task_timeout();
        let ended = supervise(cmd, &files, timeout, &self.stop, self.settings.wanted_check_interval(), || self.wanted(task)).await;
        self.remove_dag_dirs(dir.path());
        self.prune_task_logs().await;
        let ended = match ended {
            Ok(e) => e,
            Err(source) => {
                self.release(task).await;
                return Err(start_error(source));
            }
        };
        let kept = self.task_logs.is_some();
        let detail = || {
            let t = tail(&files.stderr, STDERR_TAIL_BYTES);
            let mut d = String::new();
            if !t.trim().is_empty() {
                d = format!("standard error of the executor (end):\n{t}");
            }
            if kept {
                d.push_str(&format!(
                    "\nexecutor output kept on the compute host: {} and {}\n",
                    files.stdout.display(),
                    files.stderr.display()
                ));
            }
            d
        };
        let failure = |exception: &str, message: String| Ran::Failure {
            exception: exception.into(),
            message,
            detail: detail(),
            dag: executed_dag(dir.path()),
        };
        let ran = match ended {
            Ended::Stopped => Ran::Stopped,
            Ended::Unwanted => Ran::Unwanted,
            Ended::TimedOut(limit) => failure("TimeoutError", format!("task exceeded task_timeout of {} s", seconds(limit))),
            Ended::Exited(status) if !status.success() => {
                failure("ChildProcessError", format!("executor exited with {}", describe_exit(&status)))
            }
            Ended::Exited(_) => match self.read_output(&output, p).await {
                Ok((blob, ok)) => Ran::Result { blob, ok },
                Err(message) => failure("ChildProcessError", message),
            },
        };
        if self.settings.keep_scratch {
            let kept = dir.keep();
            debug!("Kept task directory {}", kept.display());
        }
        Ok(ran)
    }

    /// Read and check the executor's result: a readable ProtocolDAGResult blob of this
    /// task's transformation.
    async fn read_output(&self, output: &Path, p: &Prepared) -> Result<(Vec<u8>, bool), String> {
        let bytes = std::fs::read(output).map_err(|e| format!("executor produced no result file: {e}"))?;
        let analysed = tokio::task::spawn_blocking(move || read_result(bytes, MAX_RESULT_BYTES))
            .await
            .map_err(|e| format!("reading the executor's result failed: {e}"))?
            .map_err(|e| format!("executor produced an unreadable result: {e}"))?;
        let tk = analysed.summary.transformation_key.as_deref();
        if tk.is_some() && tk != p.transformation_key.as_deref() {
            return Err(format!(
                "executor produced a result for {}, not for {}",
                tk.unwrap_or_default(),
                p.transformation_key.as_deref().unwrap_or("?")
            ));
        }
        Ok((analysed.blob, analysed.summary.ok))
    }

    /// Bound the kept output (see [`crate::task_logs`]); failures are logged.
    async fn prune_task_logs(&self) {
        let Some(limits) = self.task_logs.clone() else { return };
        match tokio::task::spawn_blocking(move || limits.prune(std::time::SystemTime::now())).await {
            Ok(Ok(p)) if p.files > 0 => debug!("Removed {} old task log files ({} bytes)", p.files, p.bytes),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("Could not prune the task logs: {e}"),
            Err(e) => warn!("Could not prune the task logs: {e}"),
        }
    }

    /// Remove the DAG's shared and scratch directories named in the task directory's
    /// `dag_key` file, unless they are to be kept.
    fn remove_dag_dirs(&self, dir: &Path) {
        let Ok(key) = std::fs::read_to_string(dir.join(DAG_KEY_FILE)) else { return };
        let key = key.trim();
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            return;
        }
        for (keep, base) in [(self.settings.keep_shared, &self.shared_basedir), (self.settings.keep_scratch, &self.scratch_basedir)] {
            let path = base.join(key);
            if !keep && path.exists() {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    warn!("Could not remove {}: {e}", path.display());
                }
            }
        }
    }
}

/// The DAG the executor recorded in task directory `dir` (`dag.json`, `running_unit`),
/// if it recorded a usable one.
fn executed_dag(dir: &Path) -> Option<ExecutedDag> {
    let bytes = std::fs::read(dir.join(DAG_FILE)).ok()?;
    let running = std::fs::read_to_string(dir.join(RUNNING_UNIT_FILE)).ok();
    match ExecutedDag::parse(&bytes, running.as_deref()) {
        Ok(dag) => Some(dag),
        Err(e) => {
            warn!("The executor's {DAG_FILE} is unusable ({e}); reporting the failure without its units");
            None
        }
    }
}

/// What running the executor gave.
enum Ran {
    Result { blob: Vec<u8>, ok: bool },
    Failure { exception: String, message: String, detail: String, dag: Option<ExecutedDag> },
    Stopped,
    Unwanted,
}

/// `5` for whole seconds, else `2.5`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

/// Heartbeat now and then every `every` until stopped or aborted; failures are logged.
async fn heartbeat_loop(client: Arc<Client>, id: ComputeServiceId, policy: RetryPolicy, every: Duration, stop: StopHandle) {
    loop {
        match policy.run(|| client.heartbeat(&id)).await {
            Ok(_) => debug!("Updated heartbeat"),
            Err(e) => warn!("Heartbeat failed; will retry next interval: {e}"),
        }
        if stop.sleep(every).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_fractional_seconds() {
        assert_eq!(seconds(Duration::from_secs(5)), "5");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5");
    }

    #[tokio::test]
    async fn stop_wakes_sleepers() {
        let stop = StopHandle::new();
        let s = stop.clone();
        let t0 = Instant::now();
        let sleeper = tokio::spawn(async move { s.sleep(Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.stop();
        assert!(sleeper.await.unwrap());
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(stop.sleep(Duration::from_secs(60)).await, "stopping is sticky");
        assert!(!StopHandle::new().sleep(Duration::from_millis(1)).await);
    }
}
