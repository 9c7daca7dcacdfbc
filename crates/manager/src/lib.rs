//! Compute managers (issue: compute that scales to the work): a process that registers
//! with the compute API as a compute manager, asks it how much work is waiting, and starts
//! compute services to match — as child processes or Slurm jobs — up to a limit; the
//! services leave by themselves when they run out of work.
//!
//! * [`settings`] — the YAML file: upstream's `ComputeManagerSettings` keys, the
//!   `service` section every started service gets, the `backend` section;
//! * [`manager`] — the loop (register, instruction, sizing, status,
//!   deregister);
//! * [`backend`] — the [`backend::Backend`] trait and its `local` and `slurm`
//!   implementations (and how to add one).

pub mod backend;
pub mod manager;
pub mod settings;

pub use manager::{Manager, ManagerEnd, ManagerError};
pub use settings::{BackendSettings, ManagerSettings};
