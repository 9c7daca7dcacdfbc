//! Our compute service (issue #5): claims tasks over the compute API, runs each in a
//! supervised child process, and pushes the results — wire-compatible with alchemiscale
//! 0.8's compute API, and better behaved than upstream's `SynchronousComputeService`
//! (see [`service`] for the differences).
//!
//! * [`settings`] — the YAML settings file plus our additions;
//! * [`service`] — the service loop: register, heartbeat, claim,
//!   execute, push, deregister; stop handling;
//! * [`executor`] — child processes with time limits, process-group kills, and the
//!   choice between the native and the python executor;
//! * [`environment`] — the executors' environment (an activated interpreter, `executor_env`);
//! * [`child`] — the service ↔ executor contract (files in a task directory) and the
//!   native executor's entry point (`alchemiscale compute execute`);
//! * [`synthetic`] — `SyntheticProtocol`, the native protocol of synthetic networks;
//! * [`result`] — building ProtocolDAGResults (native results, service-reported
//!   failures against the DAG's own units);
//! * [`task_logs`] — each execution's standard output and error, kept and bounded;
//! * [`logging`] — upstream's log line format.
//!
//! The python executor's driver script is `python/alchemiscale_rs_execute.py`, embedded
//! as [`executor::PYTHON_DRIVER`].

pub mod child;
pub mod environment;
pub mod executor;
pub mod logging;
pub mod result;
pub mod service;
pub mod settings;
pub mod synthetic;
pub mod task_logs;

pub use executor::ExecutorConfig;
pub use service::{RunSummary, Service, ServiceError, StopHandle, StopReason, TaskOutcome};
pub use settings::{Settings, SettingsError};
